//! The target list of a multi-target send, `POST /{id},{id},…` (docs/patterns.md §1).

use std::fmt;

use crate::Id;

/// Most ids one multi-target send may name (fixed by the product contract, SPEC §10).
pub const MAX_TARGETS: usize = 1024;

/// Why a target list is refused (`400`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// An element that is not a canonical id; holds it, cut to 24 bytes.
    InvalidId(String),
    /// The same id twice.
    Duplicate(Id),
    /// More than [`MAX_TARGETS`] ids.
    TooMany,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::InvalidId(s) => write!(f, "invalid id {s:?} in the target list"),
            TargetError::Duplicate(id) => write!(f, "id {id} appears twice in the target list"),
            TargetError::TooMany => write!(f, "more than {MAX_TARGETS} ids in the target list"),
        }
    }
}

/// Parses `7,8,9`: canonical, distinct ids, at most [`MAX_TARGETS`], in the order given.
pub fn parse_targets(list: &[u8]) -> Result<Vec<Id>, TargetError> {
    let mut ids = Vec::new();
    for (n, element) in list.split(|&b| b == b',').enumerate() {
        if n == MAX_TARGETS {
            return Err(TargetError::TooMany);
        }
        let id = Id::parse(element).ok_or_else(|| {
            let cut = &element[..element.len().min(24)];
            TargetError::InvalidId(String::from_utf8_lossy(cut).into_owned())
        })?;
        ids.push(id);
    }
    // The first repeated id in request order is the one named.
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
        return Err(TargetError::Duplicate(*dup));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let ids = |v: &[u32]| v.iter().map(|&v| Id::new(v).unwrap()).collect::<Vec<_>>();
        assert_eq!(parse_targets(b"7,8,9"), Ok(ids(&[7, 8, 9])));
        assert_eq!(parse_targets(b"9,7"), Ok(ids(&[9, 7])));
        assert_eq!(parse_targets(b"7,,8"), Err(TargetError::InvalidId(String::new())));
        assert_eq!(parse_targets(b"7,"), Err(TargetError::InvalidId(String::new())));
        assert_eq!(parse_targets(b"7,07"), Err(TargetError::InvalidId("07".into())));
        assert_eq!(
            parse_targets(b"1,2,3,2,1"),
            Err(TargetError::Duplicate(Id::new(2).unwrap()))
        );
        let max: Vec<String> = (1..=1024).map(|i| i.to_string()).collect();
        assert_eq!(parse_targets(max.join(",").as_bytes()).unwrap().len(), 1024);
        let over: Vec<String> = (1..=1025).map(|i| i.to_string()).collect();
        assert_eq!(parse_targets(over.join(",").as_bytes()), Err(TargetError::TooMany));
        assert_eq!(
            TargetError::InvalidId("07".into()).to_string(),
            "invalid id \"07\" in the target list"
        );
    }
}
