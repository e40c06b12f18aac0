//! Per-share placement policy: which regular files are redirected into the store and which
//! stay inline (ordinary files with their data in the guest tree).
//!
//! Syntax (the value of `policy=` in a share description, so it never contains a comma):
//!
//! ```text
//! policy=RULE[;RULE...]
//! RULE = all | min-size:SIZE | include:GLOB | exclude:GLOB
//! SIZE = a whole number of bytes, optionally followed by K, M, G or T (powers of 1024,
//!        case-insensitive, an optional trailing "B" or "iB" is accepted): 4096, 64K, 1M, 2GiB
//! ```
//!
//! A regular file is redirected if and only if all three hold:
//! 1. its common portion (path relative to the share root) matches no `exclude` glob;
//! 2. there is no `include` glob, or it matches at least one;
//! 3. its size is at least `min-size` (0 when not given).
//!
//! So `exclude` beats `include`, and both are checked before the size. `all` (the default) is
//! the empty rule set: every regular file is redirected; it cannot be combined with others.
//!
//! Globs, matched byte by byte against the common portion:
//! - a glob without `/` matches the file name at any depth (`*.bin` matches `a/b/x.bin`);
//!   a glob with `/` matches the whole common portion from the share root (`tmp/*.o`);
//!   a leading `/` anchors a one-component glob at the root (`/big` matches `big` only);
//! - `*` matches any run of bytes within one component, `?` one byte other than `/`,
//!   `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one byte in (or not in) the set;
//! - `**` as a whole component matches zero or more components: `tmp/**` matches everything
//!   below `tmp`, `**/cache/*` a file in any directory named `cache`;
//! - `\` makes the next byte literal. Globs cannot contain `,` or `;` (the separators of the
//!   share description and of the rules): match those bytes with `?`.
//!
//! ```
//! use fsredirect::policy::Policy;
//!
//! let p = Policy::parse("include:*.bin;exclude:tmp/**;min-size:64K").unwrap();
//! assert!(p.redirects(b"data/model.bin", 1 << 20));
//! assert!(!p.redirects(b"data/model.bin", 100)); // too small
//! assert!(!p.redirects(b"tmp/x.bin", 1 << 20)); // excluded
//! assert!(!p.redirects(b"notes.txt", 1 << 20)); // not included
//! ```

use std::fmt;

/// Errors parsing a policy.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// A rule this version does not know.
    #[error(
        "policy `{policy}`: unknown rule `{rule}`; use all, min-size:SIZE, include:GLOB or \
         exclude:GLOB, separated by ';' (e.g. policy=include:*.bin;min-size:64K)"
    )]
    UnknownRule {
        /// The whole policy.
        policy: String,
        /// The rule.
        rule: String,
    },
    /// An empty rule (`;;`, or a leading or trailing `;`).
    #[error("policy `{0}` has an empty rule; remove the extra ';'")]
    EmptyRule(String),
    /// `all` next to other rules.
    #[error(
        "policy `{0}`: `all` cannot be combined with other rules; drop it (no rule means all)"
    )]
    AllCombined(String),
    /// `min-size` given twice.
    #[error("policy `{0}` gives min-size more than once; keep one")]
    DuplicateMinSize(String),
    /// A size that is not a number with an optional unit, or overflows.
    #[error(
        "policy `{policy}`: size `{size}` is invalid; write a whole number of bytes with an \
         optional K, M, G or T suffix (powers of 1024), e.g. min-size:64K"
    )]
    BadSize {
        /// The whole policy.
        policy: String,
        /// The size as given.
        size: String,
    },
    /// A glob that cannot be parsed.
    #[error("policy `{policy}`: glob `{glob}` is invalid: {reason}")]
    BadGlob {
        /// The whole policy.
        policy: String,
        /// The glob as given.
        glob: String,
        /// What is wrong and how to fix it.
        reason: &'static str,
    },
}

/// A `Result` with a [`PolicyError`].
pub type Result<T> = std::result::Result<T, PolicyError>;

/// Which regular files of a share are redirected (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    min_size: u64,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl Policy {
    /// The default policy: every regular file is redirected.
    pub fn all() -> Self {
        Policy::default()
    }

    /// Parses the value of `policy=`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut policy = Policy::default();
        let mut saw_all = false;
        let mut saw_size = false;
        let mut rules = 0;
        for rule in text.split(';') {
            rules += 1;
            let rule = rule.trim();
            if rule.is_empty() {
                return Err(PolicyError::EmptyRule(text.to_string()));
            }
            if rule == "all" {
                saw_all = true;
                continue;
            }
            let (key, value) = rule.split_once(':').unwrap_or((rule, ""));
            match key.trim() {
                "min-size" => {
                    if saw_size {
                        return Err(PolicyError::DuplicateMinSize(text.to_string()));
                    }
                    saw_size = true;
                    policy.min_size =
                        parse_size(value.trim()).ok_or_else(|| PolicyError::BadSize {
                            policy: text.to_string(),
                            size: value.trim().to_string(),
                        })?;
                }
                "include" | "exclude" => {
                    let glob = Glob::parse(value).map_err(|reason| PolicyError::BadGlob {
                        policy: text.to_string(),
                        glob: value.to_string(),
                        reason,
                    })?;
                    if key.trim() == "include" {
                        policy.include.push(glob);
                    } else {
                        policy.exclude.push(glob);
                    }
                }
                _ => {
                    return Err(PolicyError::UnknownRule {
                        policy: text.to_string(),
                        rule: rule.to_string(),
                    })
                }
            }
        }
        if saw_all && rules > 1 {
            return Err(PolicyError::AllCombined(text.to_string()));
        }
        Ok(policy)
    }

    /// True for the default: every regular file is redirected, whatever its path or size.
    pub fn is_all(&self) -> bool {
        self.min_size == 0 && self.include.is_empty() && self.exclude.is_empty()
    }

    /// True if neither include nor exclude rules are given: only the size matters.
    pub fn has_no_path_rules(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The size from which a file is redirected (0: any size).
    pub fn min_size(&self) -> u64 {
        self.min_size
    }

    /// True if the path rules (include and exclude) allow redirecting the file at `path`
    /// (its common portion, '/'-separated, without a leading '/').
    pub fn path_allows(&self, path: &[u8]) -> bool {
        if self.exclude.iter().any(|g| g.matches(path)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|g| g.matches(path))
    }

    /// True if a regular file at `path` of `size` bytes is redirected.
    pub fn redirects(&self, path: &[u8], size: u64) -> bool {
        size >= self.min_size && self.path_allows(path)
    }
}

impl fmt::Display for Policy {
    /// Writes the policy in the form [`Policy::parse`] reads (`all` for the default).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        let mut rules = Vec::new();
        rules.extend(self.include.iter().map(|g| format!("include:{}", g.text)));
        rules.extend(self.exclude.iter().map(|g| format!("exclude:{}", g.text)));
        if self.min_size > 0 {
            rules.push(format!("min-size:{}", self.min_size));
        }
        f.write_str(&rules.join(";"))
    }
}

/// Parses `64K`, `1M`, `2GiB`, `4096`...
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number: u64 = text[..digits].parse().ok()?;
    let unit = text[digits..].to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    // "iB" or "B" alone (without K, M...) means bytes, which is fine; "ib" alone is not.
    if shift == 0 && text[digits..].eq_ignore_ascii_case("ib") {
        return None;
    }
    number.checked_mul(1u64 << shift)
}

/// One byte-matching element of a glob component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    AnyByte,
    Star,
    Class { negate: bool, ranges: Vec<(u8, u8)> },
}

/// One component of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`: zero or more whole components.
    AnyComponents,
    /// A pattern for exactly one component.
    Component(Vec<Token>),
}

/// A parsed glob (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    text: String,
    /// Matches the whole common portion (else only the last component).
    anchored: bool,
    parts: Vec<Part>,
}

impl Glob {
    fn parse(text: &str) -> std::result::Result<Self, &'static str> {
        if text.is_empty() {
            return Err("it is empty; give a pattern such as *.bin or tmp/**");
        }
        let body = text.strip_prefix('/').unwrap_or(text);
        let anchored = body.len() != text.len() || body.contains('/');
        let mut parts = Vec::new();
        for component in split_unescaped(body.as_bytes()) {
            if component.is_empty() {
                return Err("it has an empty component (`//` or a trailing `/`); remove it");
            }
            if component == b"**" {
                parts.push(Part::AnyComponents);
                continue;
            }
            parts.push(Part::Component(parse_component(component)?));
        }
        Ok(Glob {
            text: text.to_string(),
            anchored,
            parts,
        })
    }

    fn matches(&self, path: &[u8]) -> bool {
        let components: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        if self.anchored {
            match_parts(&self.parts, &components)
        } else {
            components
                .last()
                .is_some_and(|name| match_parts(&self.parts, &[name]))
        }
    }
}

/// Splits at '/' bytes not preceded by an escaping '\'.
fn split_unescaped(text: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'/' => {
                out.push(&text[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push(&text[start.min(text.len())..]);
    out
}

fn parse_component(text: &[u8]) -> std::result::Result<Vec<Token>, &'static str> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' => {
                let b = *text
                    .get(i + 1)
                    .ok_or("it ends with a lone `\\`; escape a byte or remove it")?;
                if b == b'/' {
                    return Err("`\\/` cannot match: a component never contains '/'");
                }
                tokens.push(Token::Byte(b));
                i += 2;
            }
            b'*' => {
                if text.get(i + 1) == Some(&b'*') {
                    return Err(
                        "`**` must be a whole component (tmp/** or **/x); use * inside a name",
                    );
                }
                tokens.push(Token::Star);
                i += 1;
            }
            b'?' => {
                tokens.push(Token::AnyByte);
                i += 1;
            }
            b'[' => {
                let (token, next) = parse_class(text, i + 1)?;
                tokens.push(token);
                i = next;
            }
            b => {
                tokens.push(Token::Byte(b));
                i += 1;
            }
        }
    }
    Ok(tokens)
}

/// Parses a set after its `[`; returns it and the index after its `]`.
fn parse_class(text: &[u8], mut i: usize) -> std::result::Result<(Token, usize), &'static str> {
    const UNCLOSED: &str = "a `[` set is not closed; add `]` or escape the `[` as `\\[`";
    let negate = matches!(text.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut b = *text.get(i).ok_or(UNCLOSED)?;
        if b == b']' && !first {
            return Ok((Token::Class { negate, ranges }, i + 1));
        }
        first = false;
        if b == b'\\' {
            i += 1;
            b = *text.get(i).ok_or(UNCLOSED)?;
        }
        i += 1;
        let mut hi = b;
        if text.get(i) == Some(&b'-') && text.get(i + 1).is_some_and(|&n| n != b']') {
            hi = text[i + 1];
            if hi == b'\\' {
                hi = *text.get(i + 2).ok_or(UNCLOSED)?;
                i += 1;
            }
            i += 2;
            if hi < b {
                return Err("a range in a `[` set runs backwards; write it low-high, e.g. [a-z]");
            }
        }
        ranges.push((b, hi));
    }
}

fn match_parts(parts: &[Part], components: &[&[u8]]) -> bool {
    match parts.split_first() {
        None => components.is_empty(),
        Some((Part::AnyComponents, rest)) => {
            (0..=components.len()).any(|skip| match_parts(rest, &components[skip..]))
        }
        Some((Part::Component(tokens), rest)) => match components.split_first() {
            Some((first, more)) => match_tokens(tokens, first) && match_parts(rest, more),
            None => false,
        },
    }
}

/// Wildcard matching of one component, with the usual single backtrack point for `*`.
fn match_tokens(tokens: &[Token], name: &[u8]) -> bool {
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(Token::Byte(b)) => *b == name[n],
            Some(Token::AnyByte) => true,
            Some(Token::Class { negate, ranges }) => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&name[n])) != *negate
            }
            None => false,
        };
        if step {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Policy {
        Policy::parse(text).unwrap()
    }

    #[test]
    fn all_redirects_everything() {
        let all = p("all");
        assert!(all.is_all());
        assert_eq!(all, Policy::all());
        assert!(all.redirects(b"x", 0));
    }

    #[test]
    fn sizes_take_binary_units() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("64kb", 64 << 10),
            ("1M", 1 << 20),
            ("2GiB", 2 << 30),
            ("1T", 1 << 40),
            ("10B", 10),
        ] {
            assert_eq!(p(&format!("min-size:{text}")).min_size(), bytes, "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_with_the_input_named() {
        for text in ["", "K", "1.5M", "-1", "1X", "1 M", "1iB", "99999999999T"] {
            let err = Policy::parse(&format!("min-size:{text}")).unwrap_err();
            assert!(matches!(err, PolicyError::BadSize { .. }), "{text}: {err}");
            assert!(err.to_string().contains("min-size:64K"), "{err}");
        }
    }

    #[test]
    fn min_size_is_inclusive() {
        let pol = p("min-size:1K");
        assert!(!pol.redirects(b"f", 1023));
        assert!(pol.redirects(b"f", 1024));
    }

    #[test]
    fn unknown_rule_names_the_rule_and_the_choices() {
        let err = Policy::parse("size>1M").unwrap_err();
        assert_eq!(
            err,
            PolicyError::UnknownRule {
                policy: "size>1M".into(),
                rule: "size>1M".into()
            }
        );
        assert!(err.to_string().contains("min-size:SIZE"));
    }

    #[test]
    fn empty_rules_all_combined_and_duplicates_are_refused() {
        assert!(matches!(
            Policy::parse("min-size:1K;"),
            Err(PolicyError::EmptyRule(_))
        ));
        assert!(matches!(
            Policy::parse("all;min-size:1K"),
            Err(PolicyError::AllCombined(_))
        ));
        assert!(matches!(
            Policy::parse("min-size:1K;min-size:2K"),
            Err(PolicyError::DuplicateMinSize(_))
        ));
    }

    #[test]
    fn glob_without_slash_matches_the_name_at_any_depth() {
        let pol = p("include:*.bin");
        assert!(pol.path_allows(b"x.bin"));
        assert!(pol.path_allows(b"a/b/x.bin"));
        assert!(!pol.path_allows(b"x.bin/y"));
        assert!(!pol.path_allows(b"x.bins"));
    }

    #[test]
    fn glob_with_slash_is_anchored_at_the_root() {
        let pol = p("include:data/*.bin");
        assert!(pol.path_allows(b"data/x.bin"));
        assert!(!pol.path_allows(b"other/data/x.bin"));
        assert!(
            !pol.path_allows(b"data/sub/x.bin"),
            "* stays in one component"
        );
        let root_only = p("include:/big");
        assert!(root_only.path_allows(b"big"));
        assert!(!root_only.path_allows(b"a/big"));
    }

    #[test]
    fn double_star_matches_zero_or_more_components() {
        let pol = p("include:tmp/**");
        assert!(pol.path_allows(b"tmp/x"));
        assert!(pol.path_allows(b"tmp/a/b/c"));
        assert!(!pol.path_allows(b"tmpx/a"));
        let any = p("include:**/cache/*");
        assert!(any.path_allows(b"cache/f"));
        assert!(any.path_allows(b"a/b/cache/f"));
        assert!(!any.path_allows(b"a/cache"));
        let mid = p("include:a/**/z");
        assert!(mid.path_allows(b"a/z"));
        assert!(mid.path_allows(b"a/b/c/z"));
    }

    #[test]
    fn question_mark_sets_and_escapes() {
        let pol = p("include:f?[0-9][!a-c]\\*");
        assert!(pol.path_allows(b"fx1d*"));
        assert!(!pol.path_allows(b"fx1a*"));
        assert!(!pol.path_allows(b"fx1dX"));
        assert!(!pol.path_allows(b"f/1d*"), "? never matches '/'");
        assert!(p("include:[]x]").path_allows(b"]"));
        assert!(p("include:[^x]").path_allows(b"y"));
    }

    #[test]
    fn star_backtracks() {
        let pol = p("include:a*b*c");
        assert!(pol.path_allows(b"abc"));
        assert!(pol.path_allows(b"aXbYbZc"));
        assert!(!pol.path_allows(b"aXbYcZ"));
        assert!(p("include:*").path_allows(b"anything"));
    }

    #[test]
    fn bad_globs_say_how_to_fix_them() {
        for glob in ["", "a//b", "a/", "x**", "[abc", "a\\", "[z-a]"] {
            let err = Policy::parse(&format!("include:{glob}")).unwrap_err();
            assert!(matches!(err, PolicyError::BadGlob { .. }), "{glob}: {err}");
        }
    }

    #[test]
    fn exclude_beats_include_and_both_come_before_size() {
        let pol = p("include:*.bin;exclude:tmp/**;min-size:64K");
        assert!(pol.redirects(b"a/x.bin", 64 << 10));
        assert!(!pol.redirects(b"a/x.bin", (64 << 10) - 1));
        assert!(!pol.redirects(b"tmp/x.bin", 1 << 30));
        assert!(!pol.redirects(b"a/x.txt", 1 << 30));
        let excl_only = p("exclude:*.log");
        assert!(excl_only.redirects(b"x.bin", 0));
        assert!(!excl_only.redirects(b"d/x.log", 0));
    }

    #[test]
    fn several_includes_are_alternatives() {
        let pol = p("include:*.a;include:*.b");
        assert!(pol.path_allows(b"x.a"));
        assert!(pol.path_allows(b"x.b"));
        assert!(!pol.path_allows(b"x.c"));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "all",
            "include:*.bin;exclude:tmp/**;min-size:65536",
            "min-size:1",
        ] {
            let pol = p(text);
            assert_eq!(pol.to_string(), text);
            assert_eq!(p(&pol.to_string()), pol);
        }
    }
}
