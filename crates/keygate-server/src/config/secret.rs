//! Secrets named by the configuration: the file names an environment variable, never the secret,
//! so a configuration can be shared, reviewed and committed.

/// Reads the secret `setting` names in the environment variable `var`.
///
/// # Errors
/// A message for the configuration's error list: the variable is unset (or not UTF-8), or the
/// secret is shorter than `min_len` bytes.
pub(crate) fn from_env(setting: &str, var: &str, min_len: usize) -> Result<String, String> {
    match std::env::var(var) {
        Ok(secret) if secret.len() >= min_len => Ok(secret),
        Ok(_) => Err(format!(
            "{setting}: the secret in `{var}` must be at least {min_len} bytes"
        )),
        Err(_) => Err(format!(
            "{setting}: environment variable `{var}` is not set"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_and_short_secrets_are_named() {
        let unset = "KEYGATE_TEST_SECRET_THAT_IS_NEVER_SET";
        assert_eq!(
            from_env("keys.digest_secret_env", unset, 16),
            Err(format!(
                "keys.digest_secret_env: environment variable `{unset}` is not set"
            ))
        );
        // PATH is set on every machine that runs the tests, and longer than a byte.
        assert!(from_env("x", "PATH", 1).is_ok());
        assert!(from_env("x", "PATH", usize::MAX)
            .unwrap_err()
            .contains("at least"));
    }
}
