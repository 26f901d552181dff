//! A decoder for PostgreSQL's `pgoutput` logical decoding messages (protocol
//! version 1, text tuples), as `pg_logical_slot_peek_binary_changes(slot,
//! upto, n, 'proto_version', '1', 'publication_names', pub)` returns them, one
//! message per row. Adoption reads a legacy estate's changes this way over an
//! ordinary connection (it works on RDS, which offers `pgoutput`): the control
//! plane is the subscriber, so it can map rows (add `tenant_id`, map ids)
//! before applying them. Message formats: PostgreSQL 15 documentation,
//! "Logical Replication Message Formats".

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key updates and deletes name).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
}

/// A relation as the stream describes it before its first change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the change did not touch (not sent).
    Unchanged,
    /// The value in its text form.
    Text(String),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        lsn: u64,
        end_lsn: u64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is the key (or the whole old row with REPLICA IDENTITY FULL) when
    /// the key changed or identity is full; otherwise the key is in `new`.
    Update {
        relation: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Origin, Type, Message and anything newer: not needed to apply changes.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message cut short or malformed at byte {at}: {what}")]
pub struct DecodeError {
    pub at: usize,
    pub what: &'static str,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(DecodeError { at: self.at, what })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    /// A NUL-terminated string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.at..];
        let len = rest.iter().position(|b| *b == 0).ok_or(DecodeError { at: self.at, what })?;
        let s = String::from_utf8(rest[..len].to_vec()).map_err(|_| DecodeError { at: self.at, what })?;
        self.at += len + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16("tuple column count")?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            out.push(match self.u8("tuple column kind")? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32("text length")? as usize;
                    let bytes = self.take(len, "text value")?;
                    Value::Text(
                        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError { at: self.at, what: "utf-8" })?,
                    )
                }
                _ => return Err(DecodeError { at: self.at - 1, what: "tuple column kind" }),
            });
        }
        Ok(out)
    }
}

/// Decodes one message.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, at: 0 };
    let kind = r.u8("message kind")?;
    Ok(match kind {
        b'B' => {
            let final_lsn = r.u64("begin lsn")?;
            let _timestamp = r.u64("begin timestamp")?;
            Message::Begin { final_lsn, xid: r.u32("begin xid")? }
        }
        b'C' => {
            let _flags = r.u8("commit flags")?;
            let lsn = r.u64("commit lsn")?;
            let end_lsn = r.u64("commit end lsn")?;
            Message::Commit { lsn, end_lsn }
        }
        b'R' => {
            let id = r.u32("relation id")?;
            let schema = r.string("relation schema")?;
            let name = r.string("relation name")?;
            let _identity = r.u8("replica identity")?;
            let n = r.u16("relation column count")?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.string("column name")?;
                let type_oid = r.u32("column type")?;
                let _typmod = r.u32("column typmod")?;
                columns.push(Column { key: flags & 1 == 1, name, type_oid });
            }
            Message::Relation(Relation { id, schema, name, columns })
        }
        b'I' => {
            let relation = r.u32("insert relation")?;
            match r.u8("insert marker")? {
                b'N' => Message::Insert { relation, new: r.tuple()? },
                _ => return Err(DecodeError { at: r.at - 1, what: "insert marker" }),
            }
        }
        b'U' => {
            let relation = r.u32("update relation")?;
            let (old, marker) = match r.u8("update marker")? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    (Some(old), r.u8("update new marker")?)
                }
                m => (None, m),
            };
            if marker != b'N' {
                return Err(DecodeError { at: r.at - 1, what: "update new marker" });
            }
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32("delete relation")?;
            match r.u8("delete marker")? {
                b'K' | b'O' => Message::Delete { relation, old: r.tuple()? },
                _ => return Err(DecodeError { at: r.at - 1, what: "delete marker" }),
            }
        }
        b'T' => {
            let n = r.u32("truncate count")?;
            let _options = r.u8("truncate options")?;
            let relations = (0..n).map(|_| r.u32("truncate relation")).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

/// `0/16B3748` -> 0x16B3748.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> Vec<u8> {
        let mut out = vec![b't'];
        out.extend((v.len() as u32).to_be_bytes());
        out.extend(v.as_bytes());
        out
    }

    #[test]
    fn relations_and_changes_decode_and_short_input_is_an_error() {
        let mut rel = vec![b'R'];
        rel.extend(16385u32.to_be_bytes());
        rel.extend(b"tenant_acme\0assets\0");
        rel.push(b'd');
        rel.extend(2u16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(23u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.push(0);
        rel.extend(b"name\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = decode(&rel).unwrap() else { panic!("a relation") };
        assert_eq!((r.schema.as_str(), r.name.as_str(), r.columns.len()), ("tenant_acme", "assets", 2));
        assert!(r.columns[0].key && !r.columns[1].key);

        let mut ins = vec![b'I'];
        ins.extend(16385u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(3u16.to_be_bytes());
        ins.extend(text("42"));
        ins.push(b'n');
        ins.push(b'u');
        assert_eq!(
            decode(&ins).unwrap(),
            Message::Insert { relation: 16385, new: vec![Value::Text("42".into()), Value::Null, Value::Unchanged] }
        );
        for cut in 1..ins.len() {
            assert!(decode(&ins[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
    }
}
