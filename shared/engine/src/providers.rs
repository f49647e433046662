//! Execution providers: which the deployment asks for (`LMAAS_EXECUTION_PROVIDERS`), in order of
//! preference, and which one a session actually got.

use std::fmt;

/// A provider a session can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Providers in order of preference; CPU is always last, because it always works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionProviders(Vec<ExecutionProvider>);

impl ExecutionProviders {
    pub fn cpu() -> Self {
        ExecutionProviders(vec![ExecutionProvider::Cpu])
    }

    /// Parses `cuda,cpu` or `cpu`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut providers = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let provider = match name.to_ascii_lowercase().as_str() {
                "cuda" => ExecutionProvider::Cuda,
                "cpu" => ExecutionProvider::Cpu,
                other => return Err(format!("unknown execution provider '{other}' (use cuda, cpu)")),
            };
            if !providers.contains(&provider) {
                providers.push(provider);
            }
        }
        if providers.last() != Some(&ExecutionProvider::Cpu) {
            return Err(format!("'{raw}' must end with cpu, the provider that always works (e.g. cuda,cpu)"));
        }
        Ok(ExecutionProviders(providers))
    }

    pub fn iter(&self) -> impl Iterator<Item = ExecutionProvider> + '_ {
        self.0.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse_in_order_and_must_end_with_cpu() {
        let p = ExecutionProviders::parse("cuda, cpu").unwrap();
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![ExecutionProvider::Cuda, ExecutionProvider::Cpu]);
        assert_eq!(ExecutionProviders::parse("cpu").unwrap(), ExecutionProviders::cpu());
        assert!(ExecutionProviders::parse("cuda").unwrap_err().contains("must end with cpu"));
        assert!(ExecutionProviders::parse("tpu,cpu").unwrap_err().contains("unknown execution provider 'tpu'"));
    }
}
