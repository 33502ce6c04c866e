//! Credentials as a type that cannot be printed by accident.

use std::fmt;

/// A credential (token, private key, shared secret). `Debug` and `Display` print `***`, so a
/// secret cannot leak through a log line, an error message or a derived `Debug` of a struct
/// that holds it. The value is reachable only through [`Secret::expose`], which makes every
/// place that handles the raw value easy to find.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send or sign with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("sntryu_abcdef0123456789");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Secret,
        }
        let printed = format!(
            "{:?}",
            Holder {
                token: secret.clone()
            }
        );
        assert!(!printed.contains("abcdef"), "{printed}");
        assert_eq!(secret.expose(), "sntryu_abcdef0123456789");
    }
}
