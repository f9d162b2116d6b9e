//! Sets of ids as written in tokens files and JWT claims: ids, `"FROM-TO"` ranges, or `"*"`.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::Id;

/// A set of ids: `[42, "100-200", "*"]`. Empty by default (no ids).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdSet {
    all: bool,
    /// Sorted, disjoint, inclusive ranges.
    ranges: Vec<(u32, u32)>,
}

impl IdSet {
    /// Every id.
    pub fn all() -> Self {
        IdSet {
            all: true,
            ranges: Vec::new(),
        }
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: Id) -> bool {
        if self.all {
            return true;
        }
        let v = id.get();
        // The last range starting at or before v.
        let i = self.ranges.partition_point(|&(lo, _)| lo <= v);
        i > 0 && self.ranges[i - 1].1 >= v
    }

    /// An id that both sets hold, if any.
    pub fn overlap(&self, other: &IdSet) -> Option<Id> {
        if self.is_empty() || other.is_empty() {
            return None;
        }
        match (self.all, other.all) {
            (true, _) => other.first(),
            (_, true) => self.first(),
            _ => self.ranges.iter().find_map(|&(a, b)| {
                other
                    .ranges
                    .iter()
                    .find_map(|&(c, d)| (a.max(c) <= b.min(d)).then(|| Id::new(a.max(c))).flatten())
            }),
        }
    }

    fn first(&self) -> Option<Id> {
        if self.all {
            return Id::new(1);
        }
        self.ranges.first().and_then(|&(lo, _)| Id::new(lo))
    }

    /// Whether the set has no id.
    pub fn is_empty(&self) -> bool {
        !self.all && self.ranges.is_empty()
    }

    /// Parses one textual item: `"42"`, `"100-200"` or `"*"`.
    pub fn parse_item(s: &str) -> Result<IdSet, String> {
        let mut set = IdSet::default();
        set.add_text(s)?;
        Ok(set)
    }

    /// Adds one textual item (`"42"`, `"100-200"` or `"*"`) to the set.
    pub fn add_item(&mut self, s: &str) -> Result<(), String> {
        self.add_text(s)
    }

    fn add_text(&mut self, s: &str) -> Result<(), String> {
        let t = s.trim();
        if t == "*" {
            self.all = true;
            return Ok(());
        }
        let (lo, hi) = match t.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (t, t),
        };
        match (Id::parse(lo.as_bytes()), Id::parse(hi.as_bytes())) {
            (Some(lo), Some(hi)) if lo <= hi => {
                self.insert(lo.get(), hi.get());
                Ok(())
            }
            (Some(_), Some(_)) => Err(format!("id range {s:?} runs backwards")),
            _ => Err(format!(
                "{s:?} is not an id (1 to 2147483647), a FROM-TO range of ids, or \"*\""
            )),
        }
    }

    fn add_number(&mut self, v: i64) -> Result<(), String> {
        let id = u32::try_from(v)
            .ok()
            .and_then(Id::new)
            .ok_or_else(|| format!("{v} is not an id (1 to 2147483647)"))?;
        self.insert(id.get(), id.get());
        Ok(())
    }

    fn insert(&mut self, lo: u32, hi: u32) {
        self.ranges.push((lo, hi));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.ranges = merged;
    }
}

impl<'de> Deserialize<'de> for IdSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ids, \"FROM-TO\" ranges or \"*\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IdSet, A::Error> {
                let mut set = IdSet::default();
                // At most this many items: the set is kept in memory per token.
                let mut items = 0usize;
                while let Some(item) = seq.next_element::<Item>()? {
                    items += 1;
                    if items > 10_000 {
                        return Err(de::Error::custom("more than 10000 items in an id list"));
                    }
                    match item {
                        Item::Number(v) => set.add_number(v),
                        Item::Text(s) => set.add_text(&s),
                    }
                    .map_err(de::Error::custom)?;
                }
                Ok(set)
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Item {
    Number(i64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u32) -> Id {
        Id::new(v).unwrap()
    }

    #[test]
    fn parse_and_contain() {
        let s: IdSet = serde_json::from_str(r#"[42, "100-200", "7", "199-300"]"#).unwrap();
        for (v, inside) in [
            (42, true),
            (41, false),
            (7, true),
            (100, true),
            (250, true),
            (300, true),
            (301, false),
        ] {
            assert_eq!(s.contains(id(v)), inside, "{v}");
        }
        let all: IdSet = serde_json::from_str(r#"["*"]"#).unwrap();
        assert!(all.contains(id(2147483647)));
        assert!(IdSet::default().is_empty());
        for bad in [
            r#"[0]"#,
            r#"["5-"]"#,
            r#"["9-3"]"#,
            r#"["042"]"#,
            r#"[2147483648]"#,
            r#"["a"]"#,
            r#"[-1]"#,
            r#"42"#,
        ] {
            assert!(serde_json::from_str::<IdSet>(bad).is_err(), "{bad}");
        }
    }
}
