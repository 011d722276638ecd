//! The patch region: memory mapped into the target holding the replacement
//! code, headed by a self-describing record of what was patched. Anything that
//! can read the process can tell what is applied and how to undo it, with no
//! state file.
//!
//! Layout of the header page(s): 8-byte magic `HPREGION`, a little-endian u32
//! length, then that many bytes of JSON ([`RegionHeader`]).

use crate::procfs::Mapping;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const REGION_MAGIC: &[u8; 8] = b"HPREGION";
pub const REGION_VERSION: u32 = 1;
/// Name prefix of the memfd backing a region; `/proc/PID/maps` shows
/// `/memfd:hotpatch:<patch id> (deleted)`.
pub const MEMFD_PREFIX: &str = "hotpatch:";
pub const PAGE: u64 = 4096;
/// The reach of a rel32 jump or displacement.
const REACH: u64 = (1 << 31) - PAGE;
const MAX_HEADER: usize = 1 << 20;

/// One patch site as recorded in the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub symbol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Address of the old function's entry in the process.
    pub address: u64,
    pub size: u64,
    /// Address of the replacement function in this region.
    pub replacement: u64,
    /// The baseline's bytes at the site, restored on rollback (hex).
    pub original: String,
    /// The jump written at the site (hex).
    pub jump: String,
}

/// What a region records of the hotpatch in it: written into the header, and
/// reported by `status` as it was read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRecord {
    pub patch_id: String,
    pub level: u32,
    pub build_id: String,
    pub target_file: String,
    pub classification: String,
    pub cves: Vec<String>,
    pub key_id: String,
    pub region_start: u64,
    pub region_size: u64,
    /// Unix seconds when the region was written.
    pub applied_at: u64,
    /// Set once the region is retired: its sites no longer lead to it, but its
    /// code stays mapped, as a suspended stack may still return into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Retirement>,
}

/// When and why a region was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// Unix seconds of the transition that retired it.
    pub at: u64,
    /// The level that replaced it; `None`: it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by_level: Option<u32>,
}

/// The header at the start of a region (its JSON stays flat: `record`'s
/// fields sit beside `version` and `sites`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionHeader {
    pub version: u32,
    #[serde(flatten)]
    pub record: PatchRecord,
    pub sites: Vec<SiteRecord>,
    /// Address of the shadow variable table's root in this region, when the
    /// payload uses shadow variables (see `shadow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<u64>,
    /// The hotpatch's callbacks in this region, by name (see `callback`):
    /// rollback finds its own here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub callbacks: BTreeMap<String, u64>,
    /// `[start, end)` of the region's linked `.eh_frame`, so that the stack
    /// check unwinds through replacement code (`stack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eh_frame: Option<(u64, u64)>,
}

impl RegionHeader {
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(12 + json.len());
        out.extend_from_slice(REGION_MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Length of the JSON part, read from the first 12 bytes.
    pub fn encoded_len(prefix: &[u8]) -> Result<usize, String> {
        if prefix.len() < 12 || &prefix[..8] != REGION_MAGIC {
            return Err("no HPREGION magic".into());
        }
        let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
        if len > MAX_HEADER {
            return Err(format!("header length {len} exceeds {MAX_HEADER}"));
        }
        Ok(12 + len)
    }

    /// Parses a header read from process memory (untrusted: the process can
    /// write its own memory).
    pub fn decode(bytes: &[u8]) -> Result<RegionHeader, String> {
        let total = RegionHeader::encoded_len(bytes)?;
        let json = bytes.get(12..total).ok_or("header truncated")?;
        let header: RegionHeader = serde_json::from_slice(json).map_err(|e| format!("header JSON: {e}"))?;
        if header.version != REGION_VERSION {
            return Err(format!("region version {} is not {REGION_VERSION}", header.version));
        }
        for site in &header.sites {
            let orig = hex::decode(&site.original).map_err(|_| "site original bytes not hex")?;
            let jump = hex::decode(&site.jump).map_err(|_| "site jump bytes not hex")?;
            if orig.len() != jump.len() || orig.is_empty() || orig.len() > 16 {
                return Err(format!("site {} has inconsistent byte lengths", site.symbol));
            }
        }
        Ok(header)
    }

    pub fn range(&self) -> std::ops::Range<u64> {
        self.record.region_start..self.record.region_start.saturating_add(self.record.region_size)
    }
}

/// A header sized for the worst case, so the space reserved before linking is
/// always enough once the real addresses are known.
pub fn header_reserve(template: &RegionHeader) -> u64 {
    let mut worst = template.clone();
    worst.record.region_start = u64::MAX;
    worst.record.region_size = u64::MAX;
    worst.record.applied_at = u64::MAX;
    // Room for the retirement mark, written later into the same header pages.
    worst.record.retired = Some(Retirement { at: u64::MAX, replaced_by_level: Some(u32::MAX) });
    // Room for what is known only after linking.
    worst.shadow = Some(u64::MAX);
    worst.eh_frame = Some((u64::MAX, u64::MAX));
    worst.callbacks = crate::callback::NAMES.iter().map(|n| (n.to_string(), u64::MAX)).collect();
    for s in &mut worst.sites {
        s.address = u64::MAX;
        s.replacement = u64::MAX;
    }
    round_up(worst.encode().len() as u64, PAGE)
}

pub fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The 5-byte `jmp rel32` from `site` to `dest`, if within reach.
pub fn jump(site: u64, dest: u64) -> Option<[u8; 5]> {
    let rel = (dest as i128) - (site as i128 + 5);
    let rel = i32::try_from(rel).ok()?;
    let b = rel.to_le_bytes();
    Some([0xe9, b[0], b[1], b[2], b[3]])
}

/// Chooses where to map a region of `size` bytes so that every address of the
/// target `[lo, hi)` is within rel32 reach of every address of the region.
/// Prefers the free gap just below the target: above an executable is where
/// its heap grows.
pub fn place(maps: &[Mapping], lo: u64, hi: u64, size: u64) -> Option<u64> {
    const MIN_ADDR: u64 = 0x10000;
    const MAX_ADDR: u64 = 0x7fff_ffff_0000;
    let mut sorted: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
    sorted.sort_unstable();
    let mut gaps = Vec::new();
    let mut cursor = MIN_ADDR;
    for &(start, end) in &sorted {
        if start > cursor {
            gaps.push((cursor, start));
        }
        cursor = cursor.max(end);
    }
    if cursor < MAX_ADDR {
        gaps.push((cursor, MAX_ADDR));
    }
    let reaches = |addr: u64| {
        let end = addr + size;
        end.saturating_sub(lo).max(hi.saturating_sub(addr)) <= REACH
    };
    // Keep a guard page free on each side so the region never merges visually
    // or physically with a neighbour.
    let below = gaps.iter().rev().filter(|&&(_, end)| end <= lo).find_map(|&(start, end)| {
        let addr = end.checked_sub(size + PAGE)? & !(PAGE - 1);
        (addr >= start + PAGE && reaches(addr)).then_some(addr)
    });
    below.or_else(|| {
        gaps.iter().filter(|&&(start, _)| start >= hi).find_map(|&(start, end)| {
            // Leave room for a heap growing upwards from the target.
            let addr = round_up(start + (64 << 20), PAGE);
            (addr + size + PAGE <= end && reaches(addr)).then_some(addr)
        })
    })
}

/// Region headers are found by the memfd name in the maps.
pub fn is_region_mapping(m: &Mapping) -> bool {
    m.offset == 0 && m.path.starts_with(&format!("/memfd:{MEMFD_PREFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(start: u64, end: u64) -> Mapping {
        Mapping {
            start,
            end,
            read: true,
            write: false,
            exec: true,
            private: true,
            offset: 0,
            inode: 1,
            path: "/x".into(),
        }
    }

    #[test]
    fn jumps_encode_rel32() {
        assert_eq!(jump(0x1000, 0x1005), Some([0xe9, 0, 0, 0, 0]));
        assert_eq!(jump(0x1000, 0x1000), Some([0xe9, 0xfb, 0xff, 0xff, 0xff]));
        assert_eq!(jump(0x1000, 0x1000 + (1 << 32)), None);
    }

    #[test]
    fn placement_prefers_below_and_stays_in_reach() {
        let maps = vec![map(0x5555_0000_0000, 0x5555_0001_0000), map(0x7f00_0000_0000, 0x7f00_1000_0000)];
        let addr = place(&maps, 0x5555_0000_0000, 0x5555_0001_0000, 0x3000).unwrap();
        assert!(addr + 0x3000 < 0x5555_0000_0000);
        assert!(0x5555_0001_0000 - addr < 1 << 31);
        // Non-PIE executable low in memory: only a small gap below.
        let low = vec![map(0x400000, 0x500000)];
        let addr = place(&low, 0x400000, 0x500000, 0x2000).unwrap();
        assert!(addr >= 0x10000 && addr + 0x2000 < 0x400000);
        // No room below: goes above, past a heap allowance.
        let tight = vec![map(0x10000, 0x400000), map(0x400000, 0x500000)];
        let addr = place(&tight, 0x400000, 0x500000, 0x2000).unwrap();
        assert!(addr >= 0x500000 + (64 << 20));
    }

    #[test]
    fn header_round_trip_and_reserve() {
        let h = RegionHeader {
            version: REGION_VERSION,
            record: PatchRecord {
                patch_id: "p".into(),
                level: 2,
                build_id: "ab".into(),
                target_file: "svc".into(),
                classification: "security".into(),
                cves: vec![],
                key_id: "00".into(),
                region_start: 0x1000,
                region_size: 0x3000,
                applied_at: 1,
                retired: None,
            },
            sites: vec![SiteRecord {
                symbol: "f".into(),
                file: None,
                address: 0x10,
                size: 9,
                replacement: 0x2000,
                original: "5589e5c3cc".into(),
                jump: "e900000000".into(),
            }],
            shadow: Some(0x2100),
            callbacks: BTreeMap::from([("hotpatch_post_apply".to_string(), 0x2200)]),
            eh_frame: None,
        };
        let bytes = h.encode();
        assert_eq!(RegionHeader::decode(&bytes).unwrap(), h);
        assert!(header_reserve(&h) >= bytes.len() as u64);
        assert!(RegionHeader::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(RegionHeader::decode(b"HPREGION\xff\xff\xff\xff").is_err());

        // The retirement mark fits in the space reserved when it was applied.
        let mut retired = h.clone();
        retired.record.applied_at = u64::MAX;
        retired.record.retired = Some(Retirement { at: u64::MAX, replaced_by_level: Some(u32::MAX) });
        assert!(retired.encode().len() as u64 <= header_reserve(&h));
        assert_eq!(RegionHeader::decode(&retired.encode()).unwrap(), retired);
    }
}
