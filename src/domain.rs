//! Rules about names and values that several layers share (the
//! configuration, the services, the GraphQL inputs). A leaf: it names
//! nothing else of the crate, so anything may use it without a cycle.

/// What [`display_name`] allows, as error messages say it.
pub const DISPLAY_NAME_RULE: &str = "1 to 128 characters, no control characters";

/// A name people give a thing (a device model, a group): trimmed, 1 to 128
/// characters, no control characters; `None` when it breaks that rule.
pub fn display_name(name: &str) -> Option<String> {
    let name = name.trim();
    let fits = !name.is_empty() && name.chars().count() <= 128 && !name.chars().any(char::is_control);
    fits.then(|| name.to_owned())
}

/// What [`is_command_name`] allows, as error messages say it.
pub const COMMAND_NAME_RULE: &str = "1 to 64 of A-Z, 0-9 and _, starting with a letter";

/// A command name: 1 to 64 of `A-Z`, `0-9` and `_`, starting with a letter.
pub fn is_command_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(display_name("  pilot ").as_deref(), Some("pilot"));
        assert_eq!(display_name(" "), None);
        assert_eq!(display_name("a\u{7}b"), None);
        assert_eq!(display_name(&"x".repeat(129)), None);
        assert!(is_command_name("FACTORY_RESET2"));
        assert!(!is_command_name("2FAST"));
        assert!(!is_command_name("reboot"));
        assert!(!is_command_name(&"A".repeat(65)));
    }
}
