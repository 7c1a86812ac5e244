//! The JSON reader of input records: one pass over the bytes straight into the
//! raw field structs, with no intermediate values and strings borrowed from
//! the record unless escaped.
//!
//! It accepts and rejects exactly what `serde_json` does for the same structs
//! (the job's decoder before it, kept as [`super::baseline`]), and splits its
//! errors the same way: a value of the wrong type for a known field is
//! `invalid_field` (serde's "data" errors), anything else that is not JSON is
//! `malformed_json`, each decided at the first fault in reading order. So the
//! dead-letter reasons did not change; `tests/decode.rs` and the fuzz target
//! `decode` compare the two. The details (the human sentence) are this
//! reader's own.
//!
//! Why its own reader: decoding with serde_json was about a third of the
//! engine's time; this reader alone runs at 1.8 – 1.9 times its rate
//! (docs/performance.md, section 0000000000000000).

use std::borrow::Cow;

use super::{Num, Str};

/// A fault in the bytes: `data` when the JSON is well formed so far but a
/// known field holds a value of the wrong type (or comes twice).
#[derive(Debug)]
pub(super) struct Fault {
    pub data: bool,
    pub detail: String,
}

/// Boxed: every value read is returned in an `R`, and a fault as wide as
/// its message made each of them wider, moved through memory at each `?`.
type R<T> = Result<T, Box<Fault>>;

#[cold]
fn syntax<T>(detail: impl Into<String>) -> R<T> {
    Err(Box::new(Fault {
        data: false,
        detail: detail.into(),
    }))
}

#[cold]
fn data<T>(detail: impl Into<String>) -> R<T> {
    Err(Box::new(Fault {
        data: true,
        detail: detail.into(),
    }))
}

/// What a known field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A string or null.
    Str,
    /// An integer (or a float, refused later), or null.
    Num,
}

/// A known field: its name, what it holds, and the name with its closing
/// quote as one 16-byte word (`mask`: the bytes that count; 0 for a name too
/// long for it), so the key a producer writes where it is expected is
/// recognized with one comparison instead of being read as a string and
/// compared (the reader is 12–19% faster for it, docs/performance.md).
///
/// `lead` is the same for what comes between a value and the next one when
/// a producer writes no whitespace, `,"name":` (`lead_mask` 0 for a name
/// over 12 bytes): the field after the last one read is recognized with one
/// comparison, its separators with it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    pub name: &'static str,
    pub kind: Kind,
    word: u128,
    mask: u128,
    lead: u128,
    lead_mask: u128,
}

/// `bytes` as the low bytes of a little-endian word, and the mask of them.
const fn word_of(bytes: &[&[u8]]) -> (u128, u128) {
    let (mut word, mut n) = (0u128, 0);
    let mut k = 0;
    while k < bytes.len() {
        let mut i = 0;
        while i < bytes[k].len() {
            word |= (bytes[k][i] as u128) << (8 * n);
            n += 1;
            i += 1;
        }
        k += 1;
    }
    let mask = if n == 16 {
        u128::MAX
    } else {
        (1u128 << (8 * n)) - 1
    };
    (word, mask)
}

/// A [`Field`] named `name`.
pub(super) const fn field(name: &'static str, kind: Kind) -> Field {
    let b = name.as_bytes();
    let (word, mask) = if b.len() > 15 {
        (0, 0)
    } else {
        word_of(&[b, b"\""])
    };
    let (lead, lead_mask) = if b.len() > 12 {
        (0, 0)
    } else {
        word_of(&[b",\"", b, b"\":"])
    };
    Field {
        name,
        kind,
        word,
        mask,
        lead,
        lead_mask,
    }
}

/// A known field's value as read: `None` for null.
#[derive(Debug)]
pub(super) enum Value<'a> {
    Str(Option<Str<'a>>),
    Num(Option<Num>),
}

/// Reads a record's top-level object: every field named in `fields` is handed
/// to `f` with its index and value; other fields are checked and skipped.
/// `text` must be valid UTF-8 (checked once by the caller for the whole value).
pub(super) fn read_object<'a>(
    text: &'a str,
    fields: &[Field],
    mut f: impl FnMut(usize, Value<'a>),
) -> R<()> {
    debug_assert!(fields.len() <= 32);
    let mut r = Reader {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    match r.skip_ws() {
        Some(b'{') => r.i += 1,
        Some(_) => return syntax("value is not a JSON object"),
        None => return syntax("value is empty"),
    }
    let mut seen = 0u32;
    let mut first = true;
    let mut next = 0;
    loop {
        // The field after the last one read, written as producers write it:
        // its key and separators, the colon too, in one comparison.
        let lead = !first && fields.get(next).is_some_and(|fd| r.at_lead(fd));
        let field = if lead {
            r.i += fields[next].name.len() + 4;
            Some(next)
        } else {
            // The next key, or the end of the object.
            match r.skip_ws() {
                None => return syntax("end of input inside the object"),
                Some(b'}') => {
                    r.i += 1;
                    break;
                }
                Some(b'"') if first => {}
                Some(_) if first => return syntax(r.at("expected a key")),
                Some(b',') => {
                    r.i += 1;
                    match r.skip_ws() {
                        Some(b'"') => {}
                        Some(b'}') => return syntax(r.at("trailing comma")),
                        Some(_) => return syntax(r.at("expected a key")),
                        None => return syntax("end of input after a comma"),
                    }
                }
                Some(_) => return syntax(r.at("expected `,` or `}`")),
            }
            first = false;
            r.i += 1;
            // Producers write the fields in one order: try the one after the last first.
            match fields.get(next) {
                Some(f) if r.at_key(f) => {
                    r.i += f.name.len() + 1;
                    Some(next)
                }
                _ => {
                    let key = r.string(true)?;
                    fields.iter().position(|f| f.name == &*key)
                }
            }
        };
        next = field.map_or(next, |k| k + 1);
        if let Some(k) = field {
            if seen & (1 << k) != 0 {
                return data(format!("duplicate field `{}`", fields[k].name));
            }
            seen |= 1 << k;
        }
        if !lead {
            match r.skip_ws() {
                Some(b':') => r.i += 1,
                Some(_) => return syntax(r.at("expected `:`")),
                None => return syntax("end of input after a key"),
            }
        }
        r.skip_ws();
        match field {
            Some(k) => {
                let Field { name, kind, .. } = fields[k];
                let value = match kind {
                    Kind::Str => Value::Str(r.str_or_null(name)?),
                    Kind::Num => Value::Num(r.num_or_null(name)?),
                };
                f(k, value);
            }
            None => r.skip_value()?,
        }
    }
    match r.skip_ws() {
        None => Ok(()),
        Some(_) => syntax(r.at("trailing characters after the object")),
    }
}

/// The value of the eight ASCII digits in `w` (read little-endian: the
/// first digit in the lowest byte), or `None` if a byte is not a digit.
fn eight_digits(w: u64) -> Option<u64> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    // Each byte 0x30..=0x3F, and still so with 6 added: 0x30..=0x39. No
    // byte carries into the next (at most 0x45).
    if w & HIGH != ZEROS || (w + 0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    let v = w - ZEROS;
    // Neighbours combined: two digits in each 16-bit lane, then four in
    // each 32-bit lane, then eight. No lane overflows.
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v * 10_000 + (v >> 32)) & 0xFFFF_FFFF)
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn at(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    /// Skips JSON whitespace; the next byte, if any.
    fn skip_ws(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// Whether the key starting here is `f`'s name, as is, then its closing quote.
    fn at_key(&self, f: &Field) -> bool {
        f.mask != 0
            && self.b.get(self.i..self.i + 16).is_some_and(|w| {
                u128::from_le_bytes(w.try_into().expect("16 bytes")) & f.mask == f.word
            })
    }

    /// Whether `,"name":` of `f` starts here, as [`Field::lead`] says.
    fn at_lead(&self, f: &Field) -> bool {
        f.lead_mask != 0
            && self.b.get(self.i..self.i + 16).is_some_and(|w| {
                u128::from_le_bytes(w.try_into().expect("16 bytes")) & f.lead_mask == f.lead
            })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// `rest` of a literal whose first byte was read.
    fn literal(&mut self, rest: &[u8]) -> R<()> {
        for &want in rest {
            match self.peek() {
                Some(c) if c == want => self.i += 1,
                Some(_) => return syntax(self.at("invalid literal")),
                None => return syntax("end of input inside a literal"),
            }
        }
        Ok(())
    }

    /// A string's contents; the opening quote was read. `strict`: `\u`
    /// escapes must be whole characters (as serde_json checks the strings it
    /// decodes, not those it skips).
    #[inline(always)]
    fn string(&mut self, strict: bool) -> R<Cow<'a, str>> {
        let start = self.i;
        self.plain_run();
        // The common case, inlined into the caller: a string without escapes
        // whose closing quote `plain_run` stopped at. Returned through a
        // call, each string went through memory twice, and the loads after
        // the stores stalled the reader (`perf annotate`, docs/performance.md).
        if self.peek() == Some(b'"') {
            let s = &self.text[start..self.i];
            self.i += 1;
            return Ok(Cow::Borrowed(s));
        }
        self.string_rest(start, strict)
    }

    /// [`Reader::string`] past its plain run.
    #[inline(never)]
    fn string_rest(&mut self, start: usize, strict: bool) -> R<Cow<'a, str>> {
        loop {
            match self.peek() {
                Some(b'"') => {
                    let s = &self.text[start..self.i];
                    self.i += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(c) if c < 0x20 => return syntax(self.at("control character in a string")),
                Some(_) => self.i += 1,
                None => return syntax("end of input inside a string"),
            }
        }
        // Escapes: the rest is copied, unescaped.
        let mut out = String::with_capacity(self.i - start + 16);
        out.push_str(&self.text[start..self.i]);
        loop {
            let run = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(&self.text[run..self.i]);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    self.escape(strict, &mut out)?;
                }
                Some(_) => return syntax(self.at("control character in a string")),
                None => return syntax("end of input inside a string"),
            }
        }
    }

    /// Skips bytes that need no attention inside a string (not a quote, a
    /// backslash or a control character), eight at a time while it can.
    fn plain_run(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            // The high bit of each byte of `special` is set where a byte is a
            // quote, a backslash or below 0x20 (where none is, none is set).
            let zero_at = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
            let special = zero_at(x ^ (ONES * b'"' as u64))
                | zero_at(x ^ (ONES * b'\\' as u64))
                | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
            if special != 0 {
                self.i += special.trailing_zeros() as usize / 8;
                return;
            }
            self.i += 8;
        }
    }

    /// One escape after its backslash, appended to `out`.
    fn escape(&mut self, strict: bool, out: &mut String) -> R<()> {
        let Some(c) = self.peek() else {
            return syntax("end of input inside an escape");
        };
        self.i += 1;
        let simple = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = self.hex4()?;
                let c = match n {
                    0xDC00..=0xDFFF if strict => {
                        return syntax(self.at("lone surrogate in \\u escape"))
                    }
                    0xD800..=0xDBFF if strict => {
                        if self.peek() != Some(b'\\') {
                            return syntax(self.at("lone surrogate in \\u escape"));
                        }
                        self.i += 1;
                        if self.peek() != Some(b'u') {
                            return syntax(self.at("lone surrogate in \\u escape"));
                        }
                        self.i += 1;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return syntax(self.at("lone surrogate in \\u escape"));
                        }
                        char::from_u32(0x1_0000 + ((n - 0xD800) << 10) + (low - 0xDC00))
                    }
                    n => char::from_u32(n),
                };
                // Skipped strings (not strict) are never kept.
                out.push(c.unwrap_or(char::REPLACEMENT_CHARACTER));
                return Ok(());
            }
            _ => return syntax(self.at("invalid escape")),
        };
        out.push(simple);
        Ok(())
    }

    fn hex4(&mut self) -> R<u32> {
        let mut n = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                Some(_) => return syntax(self.at("invalid \\u escape")),
                None => return syntax("end of input inside an escape"),
            };
            self.i += 1;
            n = n * 16 + d as u32;
        }
        Ok(n)
    }

    /// A known string field: a string or null; another well-formed value is
    /// a data fault, an ill-formed one a syntax fault.
    #[inline(always)]
    fn str_or_null(&mut self, name: &str) -> R<Option<Str<'a>>> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                Ok(Some(Str(self.string(true)?)))
            }
            Some(b'n') => {
                self.i += 1;
                self.literal(b"ull")?;
                Ok(None)
            }
            _ => {
                let found = self.wrong_type()?;
                data(format!("`{name}` must be a string, got {found}"))
            }
        }
    }

    /// A known number field: a number or null; another well-formed value is a
    /// data fault, an ill-formed one a syntax fault.
    #[inline(always)]
    fn num_or_null(&mut self, name: &str) -> R<Option<Num>> {
        match self.peek() {
            Some(b'n') => {
                self.i += 1;
                self.literal(b"ull")?;
                Ok(None)
            }
            Some(b'-' | b'0'..=b'9') => self.number().map(Some),
            Some(b'"') => {
                self.i += 1;
                self.string(true)?;
                data(format!("`{name}` must be a number, got a string"))
            }
            _ => {
                let found = self.wrong_type()?;
                data(format!("`{name}` must be a number, got {found}"))
            }
        }
    }

    /// Reads as far as serde_json does before it reports a value of the wrong
    /// type: a literal or a number in full, a container's first byte only.
    fn wrong_type(&mut self) -> R<&'static str> {
        match self.peek() {
            Some(b't') => {
                self.i += 1;
                self.literal(b"rue")?;
                Ok("a boolean")
            }
            Some(b'f') => {
                self.i += 1;
                self.literal(b"alse")?;
                Ok("a boolean")
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Ok("a number")
            }
            Some(b'"') => {
                self.i += 1;
                self.string(true)?;
                Ok("a string")
            }
            Some(b'[') => Ok("an array"),
            Some(b'{') => Ok("an object"),
            Some(_) => syntax(self.at("expected a value")),
            None => syntax("end of input where a value was expected"),
        }
    }

    /// A number's extent, checked: (whether it has a fraction or exponent).
    fn scan_number(&mut self) -> R<bool> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return syntax(self.at("invalid number (leading zero)"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            Some(_) => return syntax(self.at("invalid number")),
            None => return syntax("end of input inside a number"),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
            float = true;
        }
        Ok(float)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> R<()> {
        match self.peek() {
            Some(b'0'..=b'9') => {
                self.digits();
                Ok(())
            }
            Some(_) => syntax(self.at("invalid number")),
            None => syntax("end of input inside a number"),
        }
    }

    /// A number as serde_json reads it: integers that fit 64 bits exactly
    /// (`-0` is a float there), anything else a float; one too large for a
    /// float is a syntax fault.
    #[inline(always)]
    fn number(&mut self) -> R<Num> {
        let start = self.i;
        // The common case, read as it is scanned: up to 18 digits, then a
        // delimiter. Anything else is scanned and read in full below.
        let negative = self.peek() == Some(b'-');
        let digits_from = start + negative as usize;
        let mut n: u64 = 0;
        let mut i = digits_from;
        // Eight digits at a time while they come, at most twice (a time in
        // milliseconds has 13): one chain of multiplications a digit was most
        // of the reader's time in numbers.
        while i - digits_from < 16 {
            let Some(v) = self
                .b
                .get(i..i + 8)
                .and_then(|w| eight_digits(u64::from_le_bytes(w.try_into().expect("8 bytes"))))
            else {
                break;
            };
            n = n * 100_000_000 + v;
            i += 8;
        }
        while let Some(&c @ b'0'..=b'9') = self.b.get(i) {
            n = n * 10 + (c - b'0') as u64;
            i += 1;
            if i - digits_from > 18 {
                break;
            }
        }
        let count = i - digits_from;
        let plain = (1..=18).contains(&count)
            && (self.b[digits_from] != b'0' || count == 1)
            && !matches!(self.b.get(i), Some(b'0'..=b'9' | b'.' | b'e' | b'E'));
        if plain && !(negative && n == 0) {
            self.i = i;
            // At most 18 digits: within `i64`.
            let n = n as i64;
            return Ok(Num::Int(if negative { -n } else { n }));
        }
        self.number_rest(start)
    }

    /// [`Reader::number`] when it is not the common case (inlined, as `string`'s).
    #[inline(never)]
    fn number_rest(&mut self, start: usize) -> R<Num> {
        let float = self.scan_number()?;
        let text = &self.text[start..self.i];
        if !float {
            let (negative, digits) = match text.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, text),
            };
            if let Ok(n) = digits.parse::<u64>() {
                match negative {
                    false => return Ok(i64::try_from(n).map_or(Num::Huge(n), Num::Int)),
                    // -2^63 is `i64::MIN`, which `wrapping_neg` keeps.
                    true if n != 0 && n <= 1 << 63 => {
                        return Ok(Num::Int((n as i64).wrapping_neg()))
                    }
                    true => {}
                }
            }
        }
        // Converted by serde_json, as before this reader: its conversion is
        // not always the nearest float (`26666666666664.000000000000` reads
        // as 26666666666663.996), and a float's reason depends on its value
        // (whole or not), so the same conversion keeps every reason as it was.
        // Rare: only numbers with a fraction, an exponent or 19 digits and more.
        match serde_json::from_str::<f64>(text) {
            Ok(v) => Ok(Num::Float(v)),
            Err(_) => syntax(self.at("number out of range")),
        }
    }

    /// Skips a value of a field the job does not read, checking it as
    /// serde_json does: any depth (it keeps its own stack, as here), strings
    /// with escapes checked but not decoded, numbers by their syntax only.
    fn skip_value(&mut self) -> R<()> {
        // Open containers, innermost last: true for an object.
        let mut open: Vec<bool> = Vec::new();
        loop {
            // A value.
            match self.skip_ws() {
                Some(b'n') => {
                    self.i += 1;
                    self.literal(b"ull")?;
                }
                Some(b't') => {
                    self.i += 1;
                    self.literal(b"rue")?;
                }
                Some(b'f') => {
                    self.i += 1;
                    self.literal(b"alse")?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.scan_number()?;
                }
                Some(b'"') => {
                    self.i += 1;
                    self.string(false)?;
                }
                Some(c @ (b'[' | b'{')) => {
                    self.i += 1;
                    let object = c == b'{';
                    open.push(object);
                    // Empty: closed at once, and a value as a whole.
                    if !self.closes(object) {
                        if object {
                            self.key_of_skipped()?;
                        }
                        continue;
                    }
                    open.pop();
                }
                Some(_) => return syntax(self.at("expected a value")),
                None => return syntax("end of input where a value was expected"),
            }
            // After a value: close containers, or go on to the next element.
            while let Some(&object) = open.last() {
                if self.closes(object) {
                    open.pop();
                    continue;
                }
                match self.skip_ws() {
                    Some(b',') => {
                        self.i += 1;
                        if object {
                            self.key_of_skipped()?;
                        }
                        break;
                    }
                    Some(_) => return syntax(self.at("expected `,` or the end of a container")),
                    None => return syntax("end of input inside a container"),
                }
            }
            if open.is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads the end of the innermost container (an object's or an array's,
    /// as `object` says) if it comes next.
    fn closes(&mut self, object: bool) -> bool {
        let end = if object { b'}' } else { b']' };
        if self.skip_ws() == Some(end) {
            self.i += 1;
            return true;
        }
        false
    }

    /// A key and its colon inside a skipped object.
    fn key_of_skipped(&mut self) -> R<()> {
        match self.skip_ws() {
            Some(b'"') => self.i += 1,
            Some(_) => return syntax(self.at("expected a key")),
            None => return syntax("end of input inside an object"),
        }
        self.string(false)?;
        match self.skip_ws() {
            Some(b':') => {
                self.i += 1;
                Ok(())
            }
            Some(_) => syntax(self.at("expected `:`")),
            None => syntax("end of input inside an object"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::eight_digits;

    fn word(b: &[u8; 8]) -> u64 {
        u64::from_le_bytes(*b)
    }

    #[test]
    fn eight_digits_reads_digits_and_refuses_every_other_byte() {
        for s in [
            "00000000", "12345678", "99999999", "10000000", "00000001", "90817263",
        ] {
            let b: [u8; 8] = s.as_bytes().try_into().unwrap();
            assert_eq!(eight_digits(word(&b)), Some(s.parse().unwrap()), "{s}");
        }
        // Every byte that is not a digit, at every position.
        for at in 0..8 {
            for byte in (0..=255u8).filter(|c| !c.is_ascii_digit()) {
                let mut b = *b"55555555";
                b[at] = byte;
                assert_eq!(eight_digits(word(&b)), None, "byte {byte:#x} at {at}");
            }
        }
    }
}
