//! The pure text-streaming core of a generation: token ids in, text chunks out. Each
//! generation's decoding (in either runtime) runs one of each.
//!
//! Two small state machines, both deterministic and free of I/O so they can be
//! property-tested:
//! - [`IncrementalDecoder`] turns one token id at a time into text. A token may end in the
//!   middle of a UTF-8 character, and some decoders change earlier text when later tokens
//!   arrive, so it re-decodes a short window and emits only the stable new suffix; text whose
//!   decoding ends in U+FFFD (an incomplete character) is held back until disambiguated.
//!   The concatenation of everything it emits (including [`IncrementalDecoder::finish`]) equals
//!   decoding all ids at once.
//! - [`StopMatcher`] cuts the text at the first stop string. It holds back any tail that could
//!   be the start of a stop string, so nothing past a stop string is ever emitted, and its
//!   output does not depend on how the text was split into chunks.

/// Streams the text of a growing list of token ids.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window re-decoded each step (its text up to `read_offset` is already out).
    prefix_offset: usize,
    /// Ids before this index have had their text emitted.
    read_offset: usize,
}

const REPLACEMENT: char = '\u{FFFD}';

impl IncrementalDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds one id; returns the newly stable text, if any. `decode` decodes a slice of ids.
    pub fn push<E>(
        &mut self,
        id: u32,
        decode: impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<Option<String>, E> {
        self.ids.push(id);
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = decode(&self.ids[self.prefix_offset..])?;
        if text.len() > prefix.len() && !text.ends_with(REPLACEMENT) && text.starts_with(&prefix) {
            let new = text[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Returns whatever text is still held back (e.g. an incomplete character at the very
    /// end, decoded as U+FFFD) and marks it emitted.
    pub fn finish<E>(&mut self, decode: impl Fn(&[u32]) -> Result<String, E>) -> Result<String, E> {
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(match text.strip_prefix(&prefix) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        })
    }
}

/// What [`StopMatcher::push`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Emit this text (may be empty) and go on.
    Continue(String),
    /// A stop string completed: emit this text (what preceded the stop string) and stop.
    Stop(String),
}

/// Cuts streamed text at the first stop string.
///
/// "First" means the stop string that completes earliest in the text; if several complete at
/// the same position the longest wins. The output is the text before it.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Text held back because it might begin a stop string.
    pub fn pending(&self) -> &str {
        &self.pending
    }

    /// Feeds a chunk of text. After a `Stop`, further pushes return `Stop("")`.
    pub fn push(&mut self, chunk: &str) -> StopStep {
        if self.stopped {
            return StopStep::Stop(String::new());
        }
        self.pending.push_str(chunk);
        // The earliest-completing stop string (ties: the longest, i.e. earliest start).
        let mut best: Option<(usize, usize)> = None; // (end, start)
        for s in &self.stops {
            if let Some(start) = self.pending.find(s.as_str()) {
                let key = (start + s.len(), start);
                let better = match best {
                    None => true,
                    Some((end, st)) => key.0 < end || (key.0 == end && key.1 < st),
                };
                if better {
                    best = Some(key);
                }
            }
        }
        if let Some((_, start)) = best {
            self.stopped = true;
            let out = self.pending[..start].to_string();
            self.pending.clear();
            return StopStep::Stop(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let hold_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold_from].to_string();
        self.pending.drain(..hold_from);
        StopStep::Continue(out)
    }

    /// The end of the text: releases what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// The reference semantics of [`StopMatcher`] on a whole text: the text before the stop
/// string that completes first (longest on ties), or the whole text.
pub fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    for end in text.char_indices().map(|(i, c)| i + c.len_utf8()) {
        let head = &text[..end];
        let hit = stops
            .iter()
            .filter(|s| !s.is_empty() && head.ends_with(s.as_str()))
            .map(String::len)
            .max();
        if let Some(len) = hit {
            return (&text[..end - len], true);
        }
    }
    (text, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lossy(ids: &[u32]) -> Result<String, ()> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn holds_back_split_characters() {
        let mut d = IncrementalDecoder::new();
        let bytes = "é!".as_bytes();
        assert_eq!(d.push(bytes[0] as u32, lossy).unwrap(), None);
        assert_eq!(d.push(bytes[1] as u32, lossy).unwrap(), Some("é".into()));
        assert_eq!(d.push(bytes[2] as u32, lossy).unwrap(), Some("!".into()));
        assert_eq!(d.finish(lossy).unwrap(), "");
    }

    #[test]
    fn stop_strings() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("hello E"), StopStep::Continue("hello ".into()));
        assert_eq!(m.pending(), "E");
        assert_eq!(m.push("N"), StopStep::Continue("".into()));
        assert_eq!(m.push("x"), StopStep::Continue("ENx".into()));
        assert_eq!(m.push(" a\n"), StopStep::Continue(" a".into()));
        assert_eq!(m.push("\nrest"), StopStep::Stop("".into()));
        assert_eq!(
            cut_at_stop("hello ENx a\n\nrest", &stops),
            ("hello ENx a", true)
        );
    }

    #[test]
    fn earliest_completion_wins() {
        let stops = vec!["abcd".to_string(), "bc".to_string()];
        assert_eq!(cut_at_stop("xabcd", &stops), ("xa", true));
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("xabcd"), StopStep::Stop("xa".into()));
    }

    fn run_chunks(chunks: &[String], stops: &[String]) -> (String, bool, Vec<String>) {
        let mut m = StopMatcher::new(stops);
        let mut out = String::new();
        let mut seen = Vec::new();
        for c in chunks {
            match m.push(c) {
                StopStep::Continue(s) => {
                    out.push_str(&s);
                    seen.push(out.clone());
                }
                StopStep::Stop(s) => {
                    out.push_str(&s);
                    return (out, true, seen);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false, seen)
    }

    fn split_at(text: &str, cuts: &[usize]) -> Vec<String> {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        let mut points: Vec<usize> = cuts
            .iter()
            .filter(|_| !bounds.is_empty())
            .map(|&c| bounds[c % bounds.len()])
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(text[last..p].to_string());
            last = p;
        }
        chunks.push(text[last..].to_string());
        chunks
    }

    proptest! {
        #[test]
        fn stop_matcher_is_split_invariant(
            text in "[ab é\n]{0,24}",
            stops in prop::collection::vec("[ab é\n]{1,4}", 0..3),
            cuts in prop::collection::vec(0usize..64, 0..10),
        ) {
            let (expected, expected_stop) = cut_at_stop(&text, &stops);
            let chunks = split_at(&text, &cuts);
            prop_assert_eq!(chunks.concat(), text.clone());
            let (out, stopped, seen) = run_chunks(&chunks, &stops);
            prop_assert_eq!(&out, expected);
            prop_assert_eq!(stopped, expected_stop);
            // Never emits past the cut, at any moment.
            for s in seen {
                prop_assert!(expected.starts_with(&s));
            }
        }

        #[test]
        fn decoder_chunks_concatenate_to_full_decode(
            bytes in prop::collection::vec(any::<u8>(), 0..40),
            valid in "[a-zé€😀 ]{0,12}",
        ) {
            for input in [bytes.clone(), valid.as_bytes().to_vec()] {
                let ids: Vec<u32> = input.iter().map(|&b| b as u32).collect();
                let mut d = IncrementalDecoder::new();
                let mut out = String::new();
                for &id in &ids {
                    if let Some(s) = d.push(id, lossy).unwrap() {
                        // A chunk never ends inside a character.
                        prop_assert!(!s.ends_with(REPLACEMENT));
                        out.push_str(&s);
                    }
                }
                out.push_str(&d.finish(lossy).unwrap());
                prop_assert_eq!(out, lossy(&ids).unwrap());
            }
            // Valid UTF-8 never produces U+FFFD in any chunk.
            let ids: Vec<u32> = valid.bytes().map(u32::from).collect();
            let mut d = IncrementalDecoder::new();
            for &id in &ids {
                if let Some(s) = d.push(id, lossy).unwrap() {
                    prop_assert!(!s.contains(REPLACEMENT));
                }
            }
        }

        #[test]
        fn decoder_then_stop_matcher_equals_cut_of_full_decode(
            valid in "[ab é€\n]{0,16}",
            stops in prop::collection::vec("[ab é€\n]{1,3}", 0..3),
        ) {
            let ids: Vec<u32> = valid.bytes().map(u32::from).collect();
            let mut d = IncrementalDecoder::new();
            let mut chunks = Vec::new();
            for &id in &ids {
                if let Some(s) = d.push(id, lossy).unwrap() {
                    chunks.push(s);
                }
            }
            chunks.push(d.finish(lossy).unwrap());
            let (out, _, _) = run_chunks(&chunks, &stops);
            prop_assert_eq!(out.as_str(), cut_at_stop(&valid, &stops).0);
        }
    }
}
