//! `lmaas quantize in.onnx out.onnx --scheme int8|int4`: the quantizer on local files, with the
//! same quality report the quantize job stores in the manifest.

use std::path::Path;

use anyhow::{bail, Context};
use lmaas_engine::optimize::Smoothing;
use lmaas_engine::optimize::{self, Calibration, QuantizeRequest};
use lmaas_onnx::quantize::Scheme;

pub struct Args<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub scheme: &'a str,
    pub block_size: Option<usize>,
    pub symmetric: bool,
    pub keep_float: Vec<String>,
    pub keep_most_sensitive: Option<usize>,
    pub smoothing: Option<&'a str>,
    pub outlier_channels: Option<usize>,
    pub calibration: Option<&'a Path>,
}

pub fn quantize(args: Args) -> anyhow::Result<()> {
    let scheme =
        Scheme::parse(args.scheme, args.block_size, args.symmetric.then_some(true)).map_err(anyhow::Error::msg)?;
    let mut request = QuantizeRequest::new(scheme);
    request.keep_float.extend(args.keep_float);
    if let Some(n) = args.keep_most_sensitive {
        request.keep_most_sensitive = n;
    }
    if let Some(k) = args.outlier_channels {
        request.outlier_channels = k;
    }
    if let Some(smoothing) = args.smoothing {
        request.smoothing = Smoothing::parse(smoothing).map_err(anyhow::Error::msg)?;
    }
    let calibration = match args.calibration {
        Some(path) => {
            let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(optimize::parse_calibration(&raw).map_err(anyhow::Error::msg)?)
        }
        None => Some(optimize::default_calibration()),
    };
    let dir = args.input.parent().unwrap_or(Path::new("."));
    let task_config = match std::fs::read(dir.join("lmaas.json")) {
        Ok(raw) => serde_json::from_slice(&raw).context("lmaas.json beside the model is not JSON")?,
        Err(_) => serde_json::Value::Null,
    };
    let out_dir = tempfile_dir(args.output)?;
    let outcome = optimize::quantize_model(
        args.input,
        &out_dir,
        &request,
        &task_config,
        calibration.as_ref().filter(|_: &&Calibration| dir.join("tokenizer.json").exists()),
        &mut |done, total, step| {
            eprintln!("[quantize {done}/{total}] {step}");
            true
        },
    );
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&out_dir);
            bail!("{e}");
        }
    };
    std::fs::rename(out_dir.join("model.onnx"), args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let _ = std::fs::remove_dir_all(&out_dir);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// A scratch folder beside the output, so the final rename stays on one file system.
fn tempfile_dir(output: &Path) -> anyhow::Result<std::path::PathBuf> {
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = parent.join(format!(".lmaas-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
