//! Image names (`[registry/]repo[:tag]`).

use super::{Result, StoreError};

/// Validate a name and add `:latest` when it has no tag.
pub fn normalize(name: &str) -> Result<String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with(['/', ':', '.', '-'])
        || name.ends_with([':', '/'])
        || name.contains("//")
        || name.contains('@')
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    if bad {
        return Err(StoreError::InvalidReference(name.to_string()));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        let tag = last.rsplit(':').next().unwrap_or("");
        if tag.is_empty() || last.matches(':').count() > 1 {
            return Err(StoreError::InvalidReference(name.to_string()));
        }
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
}

/// Split a normalized name into repository and tag.
pub fn split(name: &str) -> (&str, &str) {
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    }
}

/// Names under which `name` may also be stored (registry prefixes that
/// other tools add).
pub fn aliases(name: &str) -> Vec<String> {
    let mut v = vec![name.to_string()];
    for p in ["docker.io/library/", "docker.io/", "localhost/"] {
        if let Some(rest) = name.strip_prefix(p) {
            v.push(rest.to_string());
        } else {
            v.push(format!("{p}{name}"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("busybox").unwrap(), "busybox:latest");
        assert_eq!(normalize("a/b:1.0").unwrap(), "a/b:1.0");
        assert_eq!(
            normalize("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        assert!(normalize("").is_err());
        assert!(normalize("a b").is_err());
        assert!(normalize("a:").is_err());
        assert_eq!(split("localhost:5000/a/b:1"), ("localhost:5000/a/b", "1"));
        assert_eq!(split("a/b"), ("a/b", "latest"));
    }
}
