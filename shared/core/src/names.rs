//! Validated names: model names, versions, aliases and `name[:tag]` references.
//! Parse once at the edge; after that no code can hold an invalid name.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Error;

const MAX_NAME_LEN: usize = 64;

/// A model name: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelName(String);

impl ModelName {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if is_valid_name(raw) {
            Ok(ModelName(raw.to_string()))
        } else {
            Err(Error::bad_request(format!(
                "invalid model name '{}': use 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
                printable(raw)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid_name(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Echoes user input in messages without letting it flood or forge log lines.
pub(crate) fn printable(raw: &str) -> String {
    let mut shown: String = raw.chars().take(80).map(|c| if c.is_control() { '?' } else { c }).collect();
    if raw.chars().count() > 80 {
        shown.push('…');
    }
    shown
}

impl TryFrom<String> for ModelName {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self, Error> {
        ModelName::parse(&raw)
    }
}

impl From<ModelName> for String {
    fn from(name: ModelName) -> String {
        name.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A model version number: a positive integer, written without leading zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Version(u32);

impl Version {
    pub fn new(number: u32) -> Result<Self, Error> {
        if number == 0 {
            return Err(Error::bad_request("invalid version 0: versions start at 1"));
        }
        Ok(Version(number))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    fn parse(raw: &str) -> Option<Result<Self, Error>> {
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(match raw.parse::<u32>() {
            Ok(n) if !raw.starts_with('0') => Version::new(n),
            _ => Err(Error::bad_request(format!(
                "invalid version '{}': use a positive integer without leading zeros",
                printable(raw)
            ))),
        })
    }
}

impl TryFrom<u32> for Version {
    type Error = Error;
    fn try_from(number: u32) -> Result<Self, Error> {
        Version::new(number)
    }
}

impl From<Version> for u32 {
    fn from(version: Version) -> u32 {
        version.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An alias such as `latest`, `int8` or `prod`: a model name that starts with a letter, so it can
/// never be mistaken for a version number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AliasName(String);

impl AliasName {
    pub fn latest() -> Self {
        AliasName("latest".to_string())
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        if is_valid_name(raw) && raw.as_bytes()[0].is_ascii_lowercase() {
            Ok(AliasName(raw.to_string()))
        } else {
            Err(Error::bad_request(format!(
                "invalid alias '{}': use 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' or '-', starting with a letter",
                printable(raw)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AliasName {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self, Error> {
        AliasName::parse(&raw)
    }
}

impl From<AliasName> for String {
    fn from(alias: AliasName) -> String {
        alias.0
    }
}

/// What follows the `:` in a model reference: a version number or an alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tag {
    Version(Version),
    Alias(AliasName),
}

impl Tag {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        match Version::parse(raw) {
            Some(version) => version.map(Tag::Version),
            None => AliasName::parse(raw).map(Tag::Alias),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tag::Version(v) => write!(f, "{v}"),
            Tag::Alias(a) => f.write_str(a.as_str()),
        }
    }
}

/// A reference to a model version as users write it: `name` (alias `latest`) or `name:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub name: ModelName,
    pub tag: Tag,
}

impl ModelRef {
    /// Parses `name` or `name:tag`.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        match raw.split_once(':') {
            Some((name, tag)) => Ok(ModelRef { name: ModelName::parse(name)?, tag: Tag::parse(tag)? }),
            None => Ok(ModelRef { name: ModelName::parse(raw)?, tag: Tag::Alias(AliasName::latest()) }),
        }
    }

    /// Parses the V2 path form: `{model}` plus an optional `/versions/{version}` segment, where
    /// the version may also be an alias. A tag in both places is ambiguous and rejected.
    pub fn from_path(model: &str, version: Option<&str>) -> Result<Self, Error> {
        let reference = ModelRef::parse(model)?;
        match version {
            None => Ok(reference),
            Some(_) if model.contains(':') => Err(Error::bad_request(format!(
                "model '{}' carries a tag and the path names a version too: use one of them",
                printable(model)
            ))),
            Some(version) => Ok(ModelRef { name: reference.name, tag: Tag::parse(version)? }),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_name_refers_to_the_latest_alias() {
        let r = ModelRef::parse("minilm").unwrap();
        assert_eq!(r.name.as_str(), "minilm");
        assert_eq!(r.tag, Tag::Alias(AliasName::latest()));
    }

    #[test]
    fn a_numeric_tag_is_a_version_and_a_word_is_an_alias() {
        assert_eq!(ModelRef::parse("minilm:2").unwrap().tag, Tag::Version(Version::new(2).unwrap()));
        assert_eq!(ModelRef::parse("minilm:int8").unwrap().tag, Tag::Alias(AliasName::parse("int8").unwrap()));
    }

    #[test]
    fn names_outside_the_allowed_alphabet_are_rejected_with_the_rule() {
        for bad in ["", "Upper", "-lead", "sp ace", "a/b", "..", &"x".repeat(65), "ünï"] {
            let err = ModelName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("a-z, 0-9"), "{bad}: {err}");
        }
        assert!(ModelName::parse(&"x".repeat(64)).is_ok());
        assert!(ModelName::parse("all-minilm.l6_v2").is_ok());
    }

    #[test]
    fn versions_must_be_positive_integers_without_leading_zeros() {
        for bad in ["0", "01", "4294967296"] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(Tag::parse("4294967295"), Ok(Tag::Version(_))));
    }

    #[test]
    fn a_tag_in_the_name_and_a_version_in_the_path_is_ambiguous() {
        assert!(ModelRef::from_path("mlp:1", Some("2")).is_err());
        assert_eq!(ModelRef::from_path("mlp", Some("2")).unwrap().to_string(), "mlp:2");
        assert_eq!(ModelRef::from_path("mlp", Some("prod")).unwrap().to_string(), "mlp:prod");
    }

    #[test]
    fn messages_do_not_echo_control_characters_or_unbounded_input() {
        let err = ModelName::parse(&format!("a\nb{}", "c".repeat(500))).unwrap_err().to_string();
        assert!(!err.contains('\n'));
        assert!(err.len() < 300);
    }
}
