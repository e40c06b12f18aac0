//! The share description and placement policy parsers.

use fsredirect::{Policy, ShareSpec};

/// Parses `data` (up to its first NUL, as UTF-8) as a share description and as a policy;
/// the bytes after the NUL are a path that a parsed policy is asked about.
///
/// Besides not panicking, each parser must read back what it writes: `Display` of a parsed
/// value is documented as the form `parse` reads, so it must parse to the same value.
pub fn share_spec(data: &[u8]) {
    let (text, path) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(spec) = ShareSpec::parse(text) {
        let written = spec.to_string();
        let again = ShareSpec::parse(&written);
        assert_eq!(
            again.as_ref(),
            Ok(&spec),
            "{text:?} was written as {written:?}"
        );
        if let Some(store) = &spec.store {
            store.policy.redirects(path, path.len() as u64);
        }
    }
    if let Ok(policy) = Policy::parse(text) {
        let written = policy.to_string();
        let again = Policy::parse(&written);
        assert_eq!(
            again.as_ref(),
            Ok(&policy),
            "{text:?} was written as {written:?}"
        );
        policy.redirects(path, 1 << 20);
        policy.redirects(path, 0);
    }
}
