//! Canary rollouts: which followers get a candidate revision before
//! everyone else.
//!
//! A selector picks followers by name (and, with etcd, by host):
//! - `N`: that many, chosen when the canary starts (the N with the lowest
//!   hash of their name among the followers connected then), kept by name;
//! - `P%`: a stable share, by a hash of the follower's name: the same
//!   followers after a restart, and a wider percentage keeps the earlier ones;
//! - `name=GLOB`: the followers whose name matches (`*`, `?`, `[...]`);
//! - `host=NAME[,NAME...]`: every follower of those hosts (etcd).
//!
//! Followers that join mid-canary are selected by the same rule.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A parsed `--canary` selector, and the text it was given as.
#[derive(Debug, Clone)]
pub struct Selector {
    text: String,
    rule: Rule,
}

#[derive(Debug, Clone)]
enum Rule {
    Count(usize),
    /// In hundredths of a percent (0 to 10000).
    Share(u32),
    Name(glob::Pattern),
    Hosts(Vec<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("--canary {0:?}: empty; give N, P%, name=GLOB or host=NAME")]
    Empty(String),
    #[error("--canary {0:?}: a count must be 1 or more")]
    Zero(String),
    #[error("--canary {0:?}: a share must be above 0% and at most 100% (at most two decimals)")]
    Share(String),
    #[error("--canary {text:?}: {why}")]
    Glob { text: String, why: String },
    #[error("--canary {0:?}: not a selector; give N (a count), P% (a share), name=GLOB or host=NAME[,NAME...]")]
    Unknown(String),
}

/// A follower as a selector sees it.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub name: &'a str,
    /// The host it runs on, as the fleet names hosts ("" on one host).
    pub host: &'a str,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let trimmed = text.trim();
        let rule = if trimmed.is_empty() {
            return Err(SelectorError::Empty(text.to_owned()));
        } else if let Some(glob) = trimmed.strip_prefix("name=") {
            Rule::Name(glob::Pattern::new(glob).map_err(|e| SelectorError::Glob {
                text: text.to_owned(),
                why: e.to_string(),
            })?)
        } else if let Some(hosts) = trimmed.strip_prefix("host=") {
            let hosts: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            if hosts.is_empty() {
                return Err(SelectorError::Empty(text.to_owned()));
            }
            Rule::Hosts(hosts)
        } else if let Some(share) = trimmed.strip_suffix('%') {
            Rule::Share(parse_share(share).ok_or_else(|| SelectorError::Share(text.to_owned()))?)
        } else if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            match trimmed.parse::<usize>() {
                Ok(0) => return Err(SelectorError::Zero(text.to_owned())),
                Ok(n) => Rule::Count(n),
                Err(_) => return Err(SelectorError::Unknown(text.to_owned())),
            }
        } else {
            return Err(SelectorError::Unknown(text.to_owned()));
        };
        Ok(Self {
            text: trimmed.to_owned(),
            rule,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// For `N`: the names of the N followers among `followers` with the
    /// lowest hash (ties by name), so the choice does not depend on the
    /// order they connected in.
    pub fn choose<'a>(&self, followers: impl IntoIterator<Item = Who<'a>>) -> Vec<String> {
        let Rule::Count(n) = self.rule else {
            return Vec::new();
        };
        let mut keyed: Vec<(u64, String)> = followers
            .into_iter()
            .map(|w| (hash(&identity(w)), identity(w)))
            .collect();
        keyed.sort();
        keyed.dedup_by(|a, b| a.1 == b.1);
        keyed.into_iter().take(n).map(|(_, id)| id).collect()
    }

    /// Whether this selector (with `chosen`, for `N`) picks `who`.
    pub fn selects(&self, chosen: &[String], who: Who<'_>) -> bool {
        match &self.rule {
            Rule::Count(_) => chosen.iter().any(|c| *c == identity(who)),
            Rule::Share(share) => hash(&identity(who)) % 10_000 < u64::from(*share),
            Rule::Name(glob) => glob.matches(who.name),
            Rule::Hosts(hosts) => hosts.iter().any(|h| h == who.host),
        }
    }
}

/// A follower's identity for selection: its name, with its host when the
/// fleet spans hosts (the same worker name on two hosts is two followers).
fn identity(who: Who<'_>) -> String {
    match who.host {
        "" => who.name.to_owned(),
        host => format!("{host}/{}", who.name),
    }
}

/// A hash that stays the same across restarts, versions and machines.
fn hash(identity: &str) -> u64 {
    let digest = Sha256::digest(identity.as_bytes());
    u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

/// `12.5` → 1250 (hundredths of a percent); above 0 and at most 100.
fn parse_share(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || fraction.len() > 2
        || !(whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let fraction: u32 = format!("{fraction:0<2}").parse().ok()?;
    let share = whole.checked_mul(100)?.checked_add(fraction)?;
    (share > 0 && share <= 10_000).then_some(share)
}

/// A canary as it is kept (in the journal, or beside the key in etcd): what
/// it started from and whom it selects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryRecord {
    pub selector: String,
    /// For `N`: the followers chosen at the start.
    #[serde(default)]
    pub chosen: Vec<String>,
    pub stable_revision: u64,
    pub bake_ms: u32,
    pub started_unix_millis: u64,
}

impl CanaryRecord {
    /// The history's note for the canary's start: "canary to 3 followers (3)",
    /// "canary to 25%".
    pub fn start_note(&self) -> String {
        match self.chosen.len() {
            0 => format!("canary to {}", self.selector),
            n => format!("canary to {n} followers ({})", self.selector),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> Who<'_> {
        Who { name, host: "" }
    }

    #[test]
    fn parses_each_kind_and_refuses_the_rest_with_one_line() {
        assert!(matches!(Selector::parse("2").unwrap().rule, Rule::Count(2)));
        assert_eq!(Selector::parse(" 25% ").unwrap().text(), "25%");
        assert!(Selector::parse("12.5%").is_ok());
        assert!(Selector::parse("name=worker-*").is_ok());
        assert!(Selector::parse("host=web-1,web-2").is_ok());
        assert_eq!(
            Selector::parse("0").unwrap_err().to_string(),
            "--canary \"0\": a count must be 1 or more"
        );
        for bad in ["0%", "101%", "1.234%", "x%", "%"] {
            assert_eq!(
                Selector::parse(bad).unwrap_err(),
                SelectorError::Share(bad.to_owned()),
                "{bad}"
            );
        }
        assert_eq!(
            Selector::parse("everyone").unwrap_err().to_string(),
            "--canary \"everyone\": not a selector; give N (a count), P% (a share), name=GLOB or host=NAME[,NAME...]"
        );
        assert!(matches!(
            Selector::parse("name=[a"),
            Err(SelectorError::Glob { .. })
        ));
        assert!(matches!(
            Selector::parse("host=,"),
            Err(SelectorError::Empty(_))
        ));
    }

    #[test]
    fn a_share_is_stable_and_a_wider_one_keeps_the_earlier_ones() {
        let names: Vec<String> = (0..1000).map(|i| format!("worker {i}")).collect();
        let picked = |share: &str| -> Vec<&String> {
            let s = Selector::parse(share).unwrap();
            names.iter().filter(|n| s.selects(&[], who(n))).collect()
        };
        let quarter = picked("25%");
        let half = picked("50%");
        assert!((200..300).contains(&quarter.len()), "{}", quarter.len());
        assert!(quarter.iter().all(|n| half.contains(n)));
        assert_eq!(picked("25%"), quarter, "the same again");
        assert_eq!(picked("100%").len(), 1000);
    }

    #[test]
    fn a_count_chooses_by_hash_not_by_order_and_keeps_its_choice() {
        let s = Selector::parse("2").unwrap();
        let a = s.choose(["a", "b", "c", "d"].map(who));
        let b = s.choose(["d", "c", "b", "a"].map(who));
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert!(s.selects(&a, who(&a[0])));
        let other = ["a", "b", "c", "d"]
            .into_iter()
            .find(|n| !a.iter().any(|c| c == n));
        assert!(!s.selects(&a, who(other.unwrap())));
        assert_eq!(s.choose(["a"].map(who)), ["a"]);
    }

    #[test]
    fn names_and_hosts() {
        let s = Selector::parse("name=canary-*").unwrap();
        assert!(s.selects(&[], who("canary-1")));
        assert!(!s.selects(&[], who("worker-1")));
        let s = Selector::parse("host=web-1,web-2").unwrap();
        let on = |host| Who { name: "w", host };
        assert!(s.selects(&[], on("web-2")));
        assert!(!s.selects(&[], on("web-3")));
        // The same name on two hosts is two followers.
        assert_ne!(identity(on("web-1")), identity(on("web-2")));
    }
}
