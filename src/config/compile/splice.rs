//! A reload's shortcut through a large rules file. Nearly all of a reload's time is the YAML
//! parse, and a user saving one edited rule of 10,000 changes one stretch of the file: the rules
//! before it are written as before, and those after it too, at the same lines unless the edit
//! added or took away lines; the reload takes the serving configuration's rules for them
//! ([`super::rules::Share`]). Such rules need not be parsed to be found. The parser is given a
//! text in which they are left out, and reads the sections, the changed stretch and the first
//! unchanged rule after it; the serving rules are taken in place of the others. The rules left
//! out become one comment line as long as their bytes, then their line breaks as empty lines, so
//! every position the parser reports is the file's own; when the rules run to the file's end,
//! those after the first unchanged rule are cut off and those before keep only their line breaks
//! (lines and columns hold; [`Plan::file_offset`] adds back the bytes left out).
//!
//! What makes the parse of the stretch the one a whole parse would give: the text before it is
//! the serving text's up to a line that starts an item of `rules:` with the same marker (so the
//! parser is between items there, as it was), and the first unchanged rule after it must be
//! handed over starting where it is written (so nothing left open, a quote or a bracket, runs
//! on past it). When that check fails, or the parse reports any problem, the caller compiles the
//! file whole. Texts this cannot vouch for are read whole: a line break the parser counts but
//! this does not (a lone carriage return), and merge keys (`<<`), of which the parser allows a
//! fixed number per file.

use super::rules::{Env, Rules};

/// How to read one file of a reload (see the module's documentation).
#[derive(Debug, PartialEq)]
pub(super) struct Plan {
    /// The file as the parser reads it.
    pub(super) text: String,
    /// How many of the file's serving rules, from its first, are taken before the rules read.
    pub(super) before: usize,
    /// Where the first rule read starts (a byte of the file), when some are taken before it.
    pub(super) first_read: u32,
    /// The rules taken after those read, if any.
    pub(super) after: Option<After>,
    /// How many bytes of the file the text read leaves out before `resume` (a byte of the text
    /// read), where it goes on as the file.
    dropped: usize,
    resume: usize,
}

/// The serving rules taken after the rules read.
#[derive(Debug, PartialEq)]
pub(super) struct After {
    /// Where the last rule read starts and ends in the file: written as before, it must be
    /// handed over from there.
    pub(super) last_read: (u32, u32),
    /// The first of the file's serving rules taken, to its last.
    pub(super) from: usize,
    /// How far they moved (bytes) from where the serving text had them.
    pub(super) shift: i64,
}

/// The plan for reading `new`, a file whose serving text was `old` with its rules written at
/// `spans` (in file order, each from its start to the next's), or `None` when the file must be
/// read whole: rules not written one per `- ` item at a common indentation, or nothing to gain.
pub(super) fn plan(old: &str, new: &str, spans: &[(u32, u32)]) -> Option<Plan> {
    let n = spans.len();
    // Below a few rules the parse is quick and the plan saves nothing worth its checks.
    if n < 3 {
        return None;
    }
    if [old, new]
        .iter()
        .any(|t| lone_carriage_return(t) || t.contains("<<"))
    {
        return None;
    }
    let (old_b, new_b) = (old.as_bytes(), new.as_bytes());
    // Each rule's item marker (`  - `), from its line's start: the same for every rule.
    let mut starts = Vec::with_capacity(n);
    let mut marker: Option<&[u8]> = None;
    for (i, &(start, end)) in spans.iter().enumerate() {
        let (start, end) = (start as usize, end as usize);
        if start >= end || end > old.len() || spans.get(i + 1).is_some_and(|s| s.0 as usize != end)
        {
            return None;
        }
        let line = old_b[..start]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let m = &old_b[line..start];
        let dash = m.iter().position(|&b| b != b' ')?;
        if m[dash] != b'-' || m.len() == dash + 1 || m[dash + 1..].iter().any(|&b| b != b' ') {
            return None;
        }
        if *marker.get_or_insert(m) != m {
            return None;
        }
        starts.push(line);
    }
    let rules_end = spans[n - 1].1 as usize;
    let prefix = old_b.iter().zip(new_b).take_while(|(a, b)| a == b).count();
    let most = old.len().min(new.len()) - prefix;
    let suffix = (old_b.iter().rev().zip(new_b.iter().rev()))
        .take(most)
        .take_while(|(a, b)| a == b)
        .count();
    let lines =
        |b: &[u8], from: usize, to: usize| b[from..to].iter().filter(|&&c| c == b'\n').count();
    let same_lines =
        lines(old_b, prefix, old.len() - suffix) == lines(new_b, prefix, new.len() - suffix);
    let shift = new.len() as i64 - old.len() as i64;
    // Taken before: the rules whose text and the next rule's marker are unchanged; at least one
    // rule is read.
    let before = spans
        .iter()
        .take_while(|s| s.1 as usize <= prefix)
        .count()
        .min(n - 1);
    // Taken after: the rules from the line break before them to the file's end unchanged, on
    // the same lines; the first of them is read.
    let suffix_from = old.len() - suffix;
    let last_read = if same_lines {
        (before..n).find(|&j| starts[j] > suffix_from)
    } else {
        None
    };
    let moved = |at: usize| (at as i64 + shift) as usize;
    let after = match last_read {
        Some(last) if last + 1 < n => {
            let (start, end) = spans[last];
            Some(After {
                last_read: (moved(start as usize) as u32, moved(end as usize) as u32),
                from: last + 1,
                shift,
            })
        }
        _ => None,
    };
    if before == 0 && after.is_none() {
        return None;
    }
    // Rules that run to the file's end (nothing written after them) need not keep their
    // bytes: those after the rules read are cut off, those before keep only their line breaks
    // (lines and columns hold; the caller adds the bytes dropped back to what the parser
    // reports). Otherwise they become comments of the same length.
    let to_end = rules_end == old.len();
    let mut text = new_b.to_vec();
    if let Some(after) = &after {
        let from = moved(starts[after.from]);
        if to_end {
            text.truncate(from);
        } else {
            comment_out(&mut text[from..moved(rules_end)]);
        }
    }
    let (mut dropped, mut resume) = (0, 0);
    if before > 0 {
        let region = starts[0]..starts[before];
        if to_end {
            let lines = text[region.clone()].iter().filter(|&&b| b == b'\n').count();
            dropped = region.len() - lines;
            resume = region.start + lines;
            text.splice(region, std::iter::repeat_n(b'\n', lines));
        } else {
            comment_out(&mut text[region]);
        }
    }
    Some(Plan {
        // Whole lines were replaced by ASCII or cut: still UTF-8.
        text: String::from_utf8(text).ok()?,
        before,
        first_read: spans[before].0,
        after,
        dropped,
        resume,
    })
}

impl Plan {
    /// Where byte `at` of the text read is in the file.
    pub(super) fn file_offset(&self, at: usize) -> usize {
        if self.dropped > 0 && at >= self.resume {
            at + self.dropped
        } else {
            at
        }
    }
}

/// A [`Plan`] followed as the parser hands the file over: the serving rules taken before the
/// first rule read and after the last, and whether the parse went as planned.
pub(super) struct Reading<'p> {
    plan: &'p Plan,
    /// The serving positions of the file's rules, in file order.
    at: &'p [usize],
    first_seen: bool,
    after_due: bool,
    after_taken: bool,
    /// The parse did not go as planned: the file must be read whole.
    broken: bool,
}

impl<'p> Reading<'p> {
    pub(super) fn new(plan: &'p Plan, at: &'p [usize]) -> Self {
        Reading {
            plan,
            at,
            first_seen: false,
            after_due: false,
            after_taken: false,
            broken: false,
        }
    }

    /// The parser hands over a rule starting at byte `start` (before it is taken).
    pub(super) fn rule(&mut self, start: usize, rules: &mut Rules<'_>) {
        if self.broken {
            return;
        }
        if !self.first_seen {
            self.first_seen = true;
            let before = self.plan.before;
            if before > 0 {
                self.broken = start != self.plan.first_read as usize
                    || !self.at[..before].iter().all(|&at| rules.keep(at, 0));
            }
        } else if self.after_due {
            // Nothing but comments follows the last rule read.
            self.broken = true;
        }
        if let Some(after) = &self.plan.after
            && start == after.last_read.0 as usize
        {
            self.after_due = true;
        }
    }

    /// The parser hands over a top-level key at byte `at` of the text read: one after the
    /// rules read where bytes were left out is not where the whole file has it.
    pub(super) fn key(&mut self, at: usize) {
        if self.plan.dropped > 0 && at >= self.plan.resume {
            self.broken = true;
        }
    }

    /// The part of the file after the last rule handed over starts (a top-level key or the
    /// file's end): the last rule read ends where it did, and the rules after it are taken.
    pub(super) fn rules_end(&mut self, rules: &mut Rules<'_>, text: &str, env: &mut Env<'_>) {
        let Some(after) = self.plan.after.as_ref().filter(|_| self.after_due) else {
            return;
        };
        self.after_due = false;
        self.after_taken = true;
        rules.end(after.last_read.1 as usize, text, env);
        if !self.broken {
            self.broken = !self.at[after.from..]
                .iter()
                .all(|&at| rules.keep(at, after.shift));
        }
    }

    /// Whether the file was read as planned: every rule taken where it was expected.
    pub(super) fn as_planned(&self) -> bool {
        !self.broken
            && (self.plan.before == 0 || self.first_seen)
            && (self.plan.after.is_none() || self.after_taken)
    }
}

/// Whether `text` has a carriage return not followed by a line feed: a line break to the
/// parser, which this module counts by line feeds.
fn lone_carriage_return(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices('\r')
        .any(|(i, _)| bytes.get(i + 1) != Some(&b'\n'))
}

/// Turns whole lines of `bytes` into one comment and empty lines: as many bytes and lines as
/// before, so what follows keeps its positions. One long comment is the cheapest text for the
/// parser to skip (it reads blanks a character at a time, and leaves its loop at each comment).
fn comment_out(bytes: &mut [u8]) {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let Some(spaces) = bytes.len().checked_sub(lines + 1) else {
        return;
    };
    bytes[0] = b'#';
    bytes[1..=spaces].fill(b' ');
    bytes[spaces + 1..].fill(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` rules named r0…, as a reload sees them: the text and each rule's span. With
    /// `tail`, a section follows the rules.
    fn file(count: usize, tail: bool) -> (String, Vec<(u32, u32)>) {
        let mut text = String::from("destinations:\n  d:\n    log: {}\nrules:\n");
        for i in 0..count {
            text.push_str(&format!(
                "  - name: r{i}\n    actions:\n      - log: {{ message: \"{i}\" }}\n"
            ));
        }
        let spans = spans_of(&text);
        if tail {
            text.push_str("sources:\n  smartlead: {}\n");
        }
        (text, spans)
    }

    /// Each rule's span in `text`: from its `name: r` to the next's, the last to the end.
    fn spans_of(text: &str) -> Vec<(u32, u32)> {
        let starts: Vec<u32> = text
            .match_indices("name: r")
            .map(|(at, _)| at as u32)
            .collect();
        let mut spans: Vec<(u32, u32)> = starts.windows(2).map(|w| (w[0], w[1])).collect();
        spans.push((*starts.last().unwrap(), text.len() as u32));
        spans
    }

    #[test]
    fn before_a_section_the_rules_not_read_are_comments_of_the_same_length() {
        let (old, spans) = file(6, true);
        let new = old.replace("name: r2\n", "name: second\n");
        let plan = plan(&old, &new, &spans).expect("a plan");
        assert_eq!(plan.text.len(), new.len());
        assert_eq!(plan.text.lines().count(), new.lines().count());
        assert_eq!(plan.before, 2);
        assert_eq!(plan.first_read as usize, new.find("name: second").unwrap());
        let after = plan.after.as_ref().expect("rules taken after");
        assert_eq!(after.from, 4);
        assert_eq!(after.shift, 4);
        assert_eq!(after.last_read.0 as usize, new.find("name: r3").unwrap());
        assert_eq!(after.last_read.1 as usize, new.find("name: r4").unwrap());
        // The sections and the rules read are as written; the rest are comments.
        assert!(
            plan.text
                .starts_with("destinations:\n  d:\n    log: {}\nrules:\n#")
        );
        for kept in ["name: second", "name: r3", "message: \"3\" }\n#"] {
            assert!(plan.text.contains(kept), "{kept}: {}", plan.text);
        }
        for gone in ["r0", "r1", "r4", "r5"] {
            assert!(!plan.text.contains(gone), "{gone}: {}", plan.text);
        }
        assert!(plan.text.ends_with("\nsources:\n  smartlead: {}\n"));
        assert_eq!(plan.file_offset(100), 100);
        // Two rules of three lines: one comment of their bytes, then empty lines.
        let mut lines = plan.text.lines().skip(4);
        let comment = lines.next().unwrap();
        assert_eq!(comment.trim_end(), "#");
        let region = new.find("  - name: second").unwrap() - new.find("rules:\n").unwrap() - 7;
        assert_eq!(comment.len(), region - 6);
        assert_eq!(lines.take(5).collect::<Vec<_>>(), [""; 5]);
    }

    #[test]
    fn rules_to_the_end_of_the_file_are_cut_and_keep_only_their_line_breaks() {
        let (old, spans) = file(6, false);
        let new = old.replace("name: r2\n", "name: second\n");
        let plan = plan(&old, &new, &spans).expect("a plan");
        let read = &new[new.find("  - name: second").unwrap()..new.find("  - name: r4").unwrap()];
        let expected = format!(
            "destinations:\n  d:\n    log: {{}}\nrules:\n{}{read}",
            "\n".repeat(6)
        );
        assert_eq!(plan.text, expected);
        // What the parser reports is moved back to where the file has it.
        let second = plan.text.find("name: second").unwrap();
        assert_eq!(plan.file_offset(second), new.find("name: second").unwrap());
        assert_eq!(plan.file_offset(3), 3);
        assert_eq!(plan.first_read as usize, new.find("name: second").unwrap());
        let after = plan.after.expect("rules taken after");
        assert_eq!(after.last_read.0 as usize, new.find("name: r3").unwrap());
        assert_eq!(after.last_read.1 as usize, new.find("name: r4").unwrap());
    }

    #[test]
    fn lines_added_leave_the_rules_below_to_be_read() {
        let (old, spans) = file(6, false);
        let new = old.replace("name: r2\n", "name: r2\n    description: longer\n");
        let plan = plan(&old, &new, &spans).expect("a plan");
        assert_eq!((plan.before, plan.after), (2, None));
        assert!(plan.text.ends_with("message: \"5\" }\n"));
    }

    #[test]
    fn the_last_rule_is_read_when_nothing_else_changed() {
        let (old, spans) = file(6, false);
        let plan = plan(&old, &old, &spans).expect("a plan");
        assert_eq!((plan.before, plan.after), (5, None));
        let edited = old.replace("    log: {}", "    log: { }");
        let plan = super::plan(&old, &edited, &spans).expect("a plan");
        assert_eq!(plan.before, 0);
        assert_eq!(plan.after.expect("rules after").from, 1);
    }

    #[test]
    fn rules_not_written_as_items_of_one_indentation_are_read_whole() {
        let (old, mut spans) = file(6, false);
        let new = old.replace("name: r2\n", "name: second\n");
        assert!(plan(&old, &new, &spans[..2]).is_none(), "too few to gain");
        let dashed = old.replace("  - name: r1", "  -\n    name: r1");
        assert!(plan(&dashed, &dashed, &spans_of(&dashed)).is_none());
        let deeper = old.replace("  - name: r1", "   - name: r1");
        assert!(plan(&deeper, &deeper, &spans_of(&deeper)).is_none());
        assert!(plan(&old, &old, &spans_of(&old)).is_some());
        spans[3].0 += 1;
        assert!(plan(&old, &new, &spans).is_none(), "spans not back to back");
    }

    #[test]
    fn a_parse_that_hands_rules_over_elsewhere_is_not_as_planned() {
        let (old, spans) = file(6, false);
        let new = old.replace("log: {}", "log: { }");
        let plan = plan(&old, &new, &spans).expect("a plan");
        let last_read = plan.after.as_ref().expect("rules after").last_read.0 as usize;
        let at: Vec<usize> = (0..6).collect();
        let mut rules = Rules::new(None);
        // The rule read last never handed over where it is written.
        let mut reading = Reading::new(&plan, &at);
        reading.rule(last_read + 1, &mut rules);
        assert!(!reading.as_planned());
        // A rule handed over after it, where only comments are.
        let mut reading = Reading::new(&plan, &at);
        reading.rule(last_read, &mut rules);
        reading.rule(last_read + 40, &mut rules);
        assert!(!reading.as_planned());
        // Rules taken before the first read need it where it was.
        let renamed = old.replace("name: r2\n", "name: second\n");
        let plan = super::plan(&old, &renamed, &spans).expect("a plan");
        let mut reading = Reading::new(&plan, &at);
        reading.rule(plan.first_read as usize + 1, &mut rules);
        assert!(!reading.as_planned());
    }

    #[test]
    fn texts_this_cannot_vouch_for_are_read_whole() {
        let (old, spans) = file(6, false);
        let crlf = old.replace('\n', "\r\n");
        assert!(plan(&crlf, &crlf, &spans_of(&crlf)).is_some());
        let lone = old.replace("name: r1\n", "name: r1\r    stop: false\n");
        assert!(
            plan(&old, &lone, &spans).is_none(),
            "a lone carriage return breaks a line"
        );
        assert!(plan(&lone, &lone, &spans_of(&lone)).is_none());
        let merged = old.replace("{ message: \"1\" }", "{ <<: { message: \"1\" } }");
        assert!(plan(&old, &merged, &spans).is_none(), "merge keys");
    }
}
