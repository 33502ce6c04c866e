//! Sharding for large orgs: `shard=i/n` takes the projects whose stable hash is `i` modulo `n`.
//! Each shard has its own lease, checkpoint and objects; the `n` shards together read every
//! project exactly once, so they deliver what one unsharded run would.

use std::fmt;

/// The most shards an org may be split into.
pub const MAX_SHARDS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

/// SplitMix64's finaliser: a fixed, well-mixed hash of the project id, the same on every
/// platform and in every version (changing it would move projects between shards).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Shard {
    /// Every project: no sharding.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n`, with `0 <= i < n <= 64`.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let form =
            || format!("shard must be written i/n with 0 <= i < n <= {MAX_SHARDS}, like 0/4");
        let (i, n) = s.trim().split_once('/').ok_or_else(form)?;
        let digits =
            |v: &str| !v.is_empty() && v.len() <= 2 && v.bytes().all(|b| b.is_ascii_digit());
        if !digits(i) || !digits(n) {
            return Err(form());
        }
        let (index, count): (u32, u32) = (
            i.parse().map_err(|_| form())?,
            n.parse().map_err(|_| form())?,
        );
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(form());
        }
        Ok(Shard { index, count })
    }

    pub fn includes(&self, project_id: u64) -> bool {
        self.count <= 1 || mix(project_id) % u64::from(self.count) == u64::from(self.index)
    }

    /// The shard whose [`Shard::suffix`] is exactly `suffix`.
    pub fn from_suffix(suffix: &str) -> Option<Shard> {
        if suffix.is_empty() {
            return Some(Shard::WHOLE);
        }
        let (i, n) = suffix.strip_prefix(".s")?.split_once("of")?;
        let shard = Shard::parse(&format!("{i}/{n}")).ok()?;
        (shard.suffix() == suffix).then_some(shard)
    }

    /// Appended to KV keys and object names: empty for the whole org.
    pub fn suffix(&self) -> String {
        if self.count <= 1 {
            String::new()
        } else {
            format!(".s{}of{}", self.index, self.count)
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_names_exactly_one_shard() {
        for s in ["0/1", "0/4", "3/4", "63/64"] {
            let shard = Shard::parse(s).unwrap();
            assert_eq!(Shard::from_suffix(&shard.suffix()), Some(shard));
        }
        for bad in [".s0of1", ".s4of4", ".s01of4", ".sxof4", "s1of4", ".s1of4/"] {
            assert_eq!(Shard::from_suffix(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_only_valid_shards() {
        assert_eq!(Shard::parse("0/4"), Ok(Shard { index: 0, count: 4 }));
        assert_eq!(Shard::parse(" 3/4 "), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(Shard::parse("0/1"), Ok(Shard::WHOLE));
        for bad in [
            "", "4/4", "0/0", "1", "-1/4", "0/65", "a/b", "1/4/2", "+1/4", "001/4", "0/ 4",
        ] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_partition_the_projects_and_are_stable() {
        for n in [2u32, 3, 4, 7, 64] {
            let shards: Vec<Shard> = (0..n).map(|i| Shard { index: i, count: n }).collect();
            let mut sizes = vec![0u32; n as usize];
            for project in 1..=2000u64 {
                let owners: Vec<&Shard> = shards.iter().filter(|s| s.includes(project)).collect();
                assert_eq!(owners.len(), 1, "project {project} with {n} shards");
                sizes[owners[0].index as usize] += 1;
            }
            // Roughly even: no shard gets less than half its share.
            assert!(sizes.iter().all(|&s| s * n * 2 >= 2000), "{sizes:?}");
        }
        // Fixed forever: a change would move projects between shards.
        let s = Shard { index: 1, count: 4 };
        // (Computed once with an independent implementation of the same finaliser.)
        assert_eq!(
            (1..=12u64).filter(|p| s.includes(*p)).collect::<Vec<_>>(),
            vec![1, 10, 11]
        );
        assert!(Shard::WHOLE.includes(123));
        assert_eq!(Shard::WHOLE.suffix(), "");
        assert_eq!(s.suffix(), ".s1of4");
    }
}
