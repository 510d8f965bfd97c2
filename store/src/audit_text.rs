//! The audit log's searchable text, packed for scanning.
//!
//! A text search without an actor or outcome has no index to narrow it and
//! reads records newest first. Reading each record's JSON (about 400 bytes,
//! most of it hashes and values text does not cover) cost a page of 20,000
//! records some 8 ms, mostly in cache misses and B-tree steps. The text a
//! search covers is therefore also kept apart, in blocks:
//!
//! - Block `b` holds the records with sequence numbers `b * 64 + 1 ..=
//!   b * 64 + 64`, in order: the block of record `seq` is `(seq - 1) / 64`.
//! - A record's part is its action, target, permission and reason (the fields
//!   [`AuditSearch`](crate::AuditSearch) text matches), each ASCII-lowercased
//!   with control bytes turned into spaces and followed by [`FIELD_END`], and
//!   then [`RECORD_END`]. A record without a target has an empty field there.
//! - Blocks are written in the same transaction as their records, so every
//!   record is in its block.
//!
//! The blocks are a filter, never the answer: a record whose part holds the
//! lowercased needle is read and matched in full ([`candidates`] may say yes
//! wrongly, never no). A needle with a control byte cannot be looked up here
//! (the separators are control bytes), and a block whose count of records is
//! not the expected one is not trusted: every record in it is a candidate.

/// Records per block.
pub const BLOCK_RECORDS: u64 = 64;

/// Ends each field of a record's part.
pub const FIELD_END: u8 = 0x1f;

/// Ends each record's part.
pub const RECORD_END: u8 = 0x1e;

/// The block that holds record `seq` (1, 2, …), and the record's index in it.
pub fn block_of(seq: u64) -> (u64, u32) {
    let at = seq.saturating_sub(1);
    (at / BLOCK_RECORDS, (at % BLOCK_RECORDS) as u32)
}

/// Appends one record's part to `block`.
pub fn push_record(block: &mut Vec<u8>, entry: &crate::AuditEntry) {
    let fields = [
        Some(entry.action.as_str()),
        entry.target.as_deref(),
        entry.permission.as_deref(),
        entry.reason.as_deref(),
    ];
    for field in fields {
        block.extend(field.unwrap_or_default().bytes().map(|b| {
            if b < 0x20 || b == 0x7f {
                b' '
            } else {
                b.to_ascii_lowercase()
            }
        }));
        block.push(FIELD_END);
    }
    block.push(RECORD_END);
}

/// A needle prepared for blocks; `None` when blocks cannot answer for it
/// (empty, or with a control byte).
pub struct BlockFinder {
    finder: memchr::memmem::Finder<'static>,
}

impl BlockFinder {
    pub fn new(needle: &str) -> Option<BlockFinder> {
        if needle.is_empty() || needle.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return None;
        }
        let lower = needle.to_ascii_lowercase().into_bytes();
        Some(BlockFinder {
            finder: memchr::memmem::Finder::new(&lower).into_owned(),
        })
    }

    /// Which of the `records` parts in `block` may match: bit `i` for the
    /// block's `i`th record. All `records` bits when the block does not hold
    /// exactly that many parts.
    pub fn candidates(&self, block: &[u8], records: u32) -> u64 {
        let all = match records {
            0 => 0,
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        };
        if memchr::memchr_iter(RECORD_END, block).count() != records as usize {
            return all;
        }
        let mut found = 0u64;
        // Parts before `from` are counted in `index`.
        let (mut from, mut index) = (0usize, 0u32);
        while let Some(hit) = self.finder.find(&block[from..]).map(|at| from + at) {
            index += memchr::memchr_iter(RECORD_END, &block[from..hit]).count() as u32;
            found |= 1u64 << index.min(63);
            // On to the next record's part: one hit per record is enough.
            match memchr::memchr(RECORD_END, &block[hit..]) {
                Some(end) => {
                    from = hit + end + 1;
                    index += 1;
                }
                None => break,
            }
        }
        found & all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditEntry;

    fn entry(action: &str, target: Option<&str>, reason: Option<&str>) -> AuditEntry {
        AuditEntry {
            at_ms: 1,
            actor: "user:needle".into(),
            permission: Some("nodes.manage".into()),
            action: action.into(),
            target: target.map(Into::into),
            outcome: "allowed".into(),
            reason: reason.map(Into::into),
            before: None,
            after: None,
        }
    }

    #[test]
    fn records_fall_in_blocks_of_64_from_seq_1() {
        assert_eq!(block_of(1), (0, 0));
        assert_eq!(block_of(64), (0, 63));
        assert_eq!(block_of(65), (1, 0));
        assert_eq!(block_of(0), (0, 0), "no record 0; no underflow");
    }

    #[test]
    fn candidates_are_the_records_whose_fields_hold_the_needle() {
        let mut block = Vec::new();
        push_record(&mut block, &entry("POST /api/v1/Jobs", Some("job-1"), None));
        push_record(&mut block, &entry("user disable", None, Some("Say \"hi\"")));
        push_record(&mut block, &entry("a\nb", Some("job-15"), None));
        let find = |needle: &str| BlockFinder::new(needle).unwrap().candidates(&block, 3);
        assert_eq!(find("JOBS"), 0b001, "case is ignored");
        assert_eq!(find("job-1"), 0b101, "one bit per record");
        assert_eq!(find("say \"HI\""), 0b010, "quotes need no escaping");
        assert_eq!(find("a b"), 0b100, "a control byte reads as a space");
        assert_eq!(find("user:needle"), 0, "the actor is not text");
        assert_eq!(find("disablejob"), 0, "no match across fields");
        assert_eq!(find("allowed"), 0, "nor in the outcome");
        assert!(BlockFinder::new("a\tb").is_none());
        assert!(BlockFinder::new("").is_none());
    }

    #[test]
    fn a_block_with_the_wrong_count_of_records_is_not_trusted() {
        let mut block = Vec::new();
        push_record(&mut block, &entry("a", None, None));
        let finder = BlockFinder::new("zzz").unwrap();
        assert_eq!(finder.candidates(&block, 1), 0);
        assert_eq!(finder.candidates(&block, 2), 0b11);
        assert_eq!(finder.candidates(&[], 64), u64::MAX);
        assert_eq!(finder.candidates(&[], 0), 0);
    }

    proptest::proptest! {
        /// The filter never drops a record the full match keeps.
        #[test]
        fn no_match_is_ever_filtered_out(
            fields in proptest::collection::vec(
                proptest::collection::vec("[a-cA-C\"\\\\ \n\u{1e}\u{1f}é-]{0,8}", 4), 1..64),
            needle in "[a-cA-C\"\\\\ é-]{1,4}",
        ) {
            let entries: Vec<AuditEntry> = fields
                .iter()
                .map(|f| AuditEntry {
                    permission: Some(f[2].clone()),
                    ..entry(&f[0], Some(&f[1]), Some(&f[3]))
                })
                .collect();
            let mut block = Vec::new();
            for e in &entries {
                push_record(&mut block, e);
            }
            let search = crate::AuditSearch { text: Some(needle.clone()), ..Default::default() };
            let bits = BlockFinder::new(&needle).unwrap().candidates(&block, entries.len() as u32);
            for (i, e) in entries.iter().enumerate() {
                let record = crate::AuditRecord {
                    seq: i as u64 + 1,
                    entry: e.clone(),
                    prev_sha256: String::new(),
                    sha256: String::new(),
                };
                if search.matches(&record) {
                    proptest::prop_assert!(bits & (1 << i) != 0, "record {} dropped", i);
                }
            }
        }
    }
}
