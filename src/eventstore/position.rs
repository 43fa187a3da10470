use std::fmt;
use std::str::FromStr;

/// A point in the global event order: the writing transaction's id (plus the restore offset)
/// and the row's sequence number inside it. Compared lexicographically, so it is safe against
/// transactions that commit out of order (docs/ARCHITECTURE.md §3). Shown to people as `tx/seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub tx: u64,
    pub seq: i64,
}

impl Position {
    pub const ZERO: Position = Position { tx: 0, seq: 0 };

    pub fn new(tx: u64, seq: i64) -> Self {
        Position { tx, seq }
    }

    /// The SQL columns are bigint; every value we write is non-negative.
    pub fn from_sql(tx: i64, seq: i64) -> Self {
        Position {
            tx: tx.max(0) as u64,
            seq,
        }
    }

    pub fn tx_sql(&self) -> i64 {
        i64::try_from(self.tx).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tx, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected `tx/seq` with two non-negative integers, e.g. `812/3`")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        let (tx, seq) = s.trim().split_once('/').ok_or_else(err)?;
        let tx: u64 = tx.parse().map_err(|_| err())?;
        let seq: i64 = seq.parse().map_err(|_| err())?;
        if seq < 0 || tx > i64::MAX as u64 {
            return Err(err());
        }
        Ok(Position { tx, seq })
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_tx_then_seq() {
        let a = Position::new(10, 900);
        let b = Position::new(11, 1);
        let c = Position::new(11, 2);
        assert!(a < b && b < c);
        let mut v = vec![c, a, b];
        v.sort();
        assert_eq!(v, vec![a, b, c]);
    }

    #[test]
    fn prints_and_parses_as_tx_slash_seq() {
        let p = Position::new(4_294_967_812, 3);
        assert_eq!(p.to_string(), "4294967812/3");
        assert_eq!("4294967812/3".parse::<Position>().unwrap(), p);
        assert_eq!(" 0/0 ".parse::<Position>().unwrap(), Position::ZERO);
    }

    #[test]
    fn rejects_malformed_positions() {
        for bad in [
            "",
            "12",
            "12/",
            "/3",
            "a/b",
            "1/-2",
            "-1/2",
            "1/2/3",
            "18446744073709551615/1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let p = Position::new(7, 9);
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"7/9\"");
        assert_eq!(serde_json::from_str::<Position>("\"7/9\"").unwrap(), p);
    }
}
