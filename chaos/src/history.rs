//! Reading recorded histories: Jepsen's register logs (`INFO  jepsen.util - PROCESS TYPE F
//! VALUE`, one register) and key-value histories in EDN (`{:process P, :type :invoke|:ok,
//! :f :get|:put|:append, :key "K", :value "V"}`). Each operation's call and return instants
//! are the lines they are on. An invocation still open at the end, or ended by `:info`, never
//! returned; one ended by `:fail` never happened, except a compare-and-set, whose `:fail` says
//! that it found another value.

use std::collections::{BTreeMap, HashMap};

use crate::linearizability::Operation;
use crate::models::{KvOp, KvOut, RegisterOp, RegisterOut};

/// A line that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn error(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// How an operation ended, as the history says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

fn kind(word: &str, line: usize) -> Result<Kind, ParseError> {
    Ok(match word {
        ":invoke" | "invoke" => Kind::Invoke,
        ":ok" | "ok" => Kind::Ok,
        ":fail" | "fail" => Kind::Fail,
        ":info" | "info" => Kind::Info,
        other => {
            return Err(error(
                line,
                format!("type {other:?}: expected :invoke, :ok, :fail or :info"),
            ))
        }
    })
}

/// Pairs invocations with their ends, one open operation per process.
struct Pairing<I, O> {
    ops: Vec<Option<Operation<I, O>>>,
    open: HashMap<u64, usize>,
}

impl<I, O> Pairing<I, O> {
    fn new() -> Self {
        Pairing {
            ops: Vec::new(),
            open: HashMap::new(),
        }
    }

    fn invoke(&mut self, process: u64, input: I, line: usize) -> Result<(), ParseError> {
        if let Some(&i) = self.open.get(&process) {
            let first = self.ops[i].as_ref().map_or(0, |o| o.line);
            return Err(error(
                line,
                format!(
                    "process {process} invokes while its operation of line {first} is still open"
                ),
            ));
        }
        self.open.insert(process, self.ops.len());
        self.ops.push(Some(Operation {
            client: process,
            input,
            output: None,
            call: line as u64,
            ret: None,
            line,
        }));
        Ok(())
    }

    /// The open operation of `process`, which this line ends.
    fn end(&mut self, process: u64, line: usize) -> Result<usize, ParseError> {
        self.open
            .remove(&process)
            .ok_or_else(|| error(line, format!("process {process} has no open operation")))
    }

    fn input(&self, i: usize) -> &I {
        &self.ops[i].as_ref().expect("an open operation").input
    }

    fn complete(&mut self, i: usize, output: O, line: usize) {
        if let Some(o) = self.ops[i].as_mut() {
            o.output = Some(output);
            o.ret = Some(line as u64);
        }
    }

    fn finish(self) -> Vec<Operation<I, O>> {
        self.ops.into_iter().flatten().collect()
    }
}

fn int(word: &str, line: usize) -> Result<i64, ParseError> {
    word.parse()
        .map_err(|_| error(line, format!("{word:?} is not an integer")))
}

fn register_value(word: &str, line: usize) -> Result<Option<i64>, ParseError> {
    match word {
        "nil" => Ok(None),
        w => int(w, line).map(Some),
    }
}

/// A Jepsen register log.
pub fn jepsen(text: &str) -> Result<Vec<Operation<RegisterOp, RegisterOut>>, ParseError> {
    const MARK: &str = "jepsen.util - ";
    let mut pairing = Pairing::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let Some((_, rest)) = raw.split_once(MARK) else {
            return Err(error(line, format!("no {:?} in the line", MARK.trim())));
        };
        let mut words = rest.split_whitespace();
        let (Some(process), Some(kind_word), Some(f)) = (words.next(), words.next(), words.next())
        else {
            return Err(error(line, "expected PROCESS TYPE F VALUE"));
        };
        let value = words.collect::<Vec<_>>().join(" ");
        let process = int(process, line)? as u64;
        match kind(kind_word, line)? {
            Kind::Invoke => {
                let input = match f {
                    ":read" => RegisterOp::Read,
                    ":write" => RegisterOp::Write(int(&value, line)?),
                    ":cas" => {
                        let pair = value
                            .strip_prefix('[')
                            .and_then(|v| v.strip_suffix(']'))
                            .ok_or_else(|| {
                                error(line, format!("cas value {value:?}: expected [OLD NEW]"))
                            })?;
                        let mut parts = pair.split_whitespace();
                        match (parts.next(), parts.next(), parts.next()) {
                            (Some(old), Some(new), None) => {
                                RegisterOp::Cas(int(old, line)?, int(new, line)?)
                            }
                            _ => {
                                return Err(error(
                                    line,
                                    format!("cas value {value:?}: expected [OLD NEW]"),
                                ))
                            }
                        }
                    }
                    other => {
                        return Err(error(
                            line,
                            format!("function {other:?}: expected :read, :write or :cas"),
                        ))
                    }
                };
                pairing.invoke(process, input, line)?;
            }
            Kind::Ok => {
                let i = pairing.end(process, line)?;
                let output = match pairing.input(i) {
                    RegisterOp::Read => RegisterOut::Read(register_value(&value, line)?),
                    _ => RegisterOut::Done,
                };
                pairing.complete(i, output, line);
            }
            Kind::Fail => {
                let i = pairing.end(process, line)?;
                if matches!(pairing.input(i), RegisterOp::Cas(..)) {
                    pairing.complete(i, RegisterOut::CasFailed, line);
                } else {
                    pairing.ops[i] = None;
                }
            }
            Kind::Info => {
                pairing.end(process, line)?;
            }
        }
    }
    Ok(pairing.finish())
}

/// A value of an EDN map, as far as histories use them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Edn {
    Keyword(String),
    Str(String),
    Int(i64),
    /// A vector of integers (`[1 2]`).
    Ints(Vec<i64>),
    /// Any other number, as written (`:time 1.25`).
    Float(String),
    Nil,
}

/// Reads `{:k v, ...}`.
fn edn_map(text: &str) -> Result<BTreeMap<String, Edn>, String> {
    let mut chars = text.trim().chars().peekable();
    if chars.next() != Some('{') {
        return Err("expected a map, {...}".into());
    }
    let mut map = BTreeMap::new();
    let skip = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
    };
    let word = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == ',' || c == '}' {
                break;
            }
            w.push(c);
            chars.next();
        }
        w
    };
    loop {
        skip(&mut chars);
        match chars.peek() {
            None => return Err("the map does not end".into()),
            Some('}') => {
                chars.next();
                break;
            }
            Some(':') => {}
            Some(c) => return Err(format!("expected a keyword, found {c:?}")),
        }
        chars.next();
        let key = word(&mut chars);
        skip(&mut chars);
        let value = match chars.peek() {
            Some('"') => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("the string of :{key} does not end")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c) => s.push(c),
                            None => return Err(format!("the string of :{key} does not end")),
                        },
                        Some(c) => s.push(c),
                    }
                }
                Edn::Str(s)
            }
            Some(':') => {
                chars.next();
                Edn::Keyword(word(&mut chars))
            }
            Some('[') => {
                chars.next();
                let mut items = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("the vector of :{key} does not end")),
                        Some(']') => break,
                        Some(c) => items.push(c),
                    }
                }
                let ints = items
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|w| !w.is_empty())
                    .map(|w| w.parse::<i64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| format!("the vector of :{key} holds something not an integer"))?;
                Edn::Ints(ints)
            }
            Some(_) => {
                let w = word(&mut chars);
                match (w.as_str(), w.parse::<i64>(), w.parse::<f64>()) {
                    ("nil", _, _) => Edn::Nil,
                    (_, Ok(i), _) => Edn::Int(i),
                    (_, _, Ok(_)) => Edn::Float(w),
                    _ => {
                        return Err(format!(
                            "value {w:?} of :{key}: not a string, keyword, number or nil"
                        ))
                    }
                }
            }
            None => return Err(format!(":{key} has no value")),
        };
        map.insert(key, value);
    }
    if chars.any(|c| !c.is_whitespace()) {
        return Err("text after the map".into());
    }
    Ok(map)
}

/// Each key's operations.
pub type Keyed<I, O> = BTreeMap<String, Vec<Operation<I, O>>>;

/// A key-value history: each key's operations.
pub type KvHistory = Keyed<KvOp, KvOut>;

/// A history of registers: each key's operations.
pub type RegisterHistory = Keyed<RegisterOp, RegisterOut>;

/// How one kind of history reads its operations.
struct Reader<I, O> {
    /// The input of an invocation: its `:f` and `:value`.
    input: fn(&str, &Edn) -> Result<I, String>,
    /// What a completed operation returned, from its `:value`.
    output: fn(&I, &Edn) -> Result<O, String>,
    /// What a `:fail` says, if it says more than that the operation did not happen.
    failed: fn(&I) -> Option<O>,
}

fn edn_history<I, O>(text: &str, reader: Reader<I, O>) -> Result<Keyed<I, O>, ParseError> {
    let mut pairing = Pairing::new();
    let mut keys: Vec<String> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let map = edn_map(raw).map_err(|m| error(line, m))?;
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| error(line, format!("no :{k} in the map")))
        };
        let process = match get("process")? {
            Edn::Int(p) if *p >= 0 => *p as u64,
            other => {
                return Err(error(
                    line,
                    format!(":process {other:?}: expected a number"),
                ))
            }
        };
        let kind = match get("type")? {
            Edn::Keyword(k) => kind(k, line)?,
            other => return Err(error(line, format!(":type {other:?}: expected a keyword"))),
        };
        let value = map.get("value").unwrap_or(&Edn::Nil);
        match kind {
            Kind::Invoke => {
                let key = match get("key")? {
                    Edn::Str(k) => k.clone(),
                    other => return Err(error(line, format!(":key {other:?}: expected a string"))),
                };
                let f = match get("f")? {
                    Edn::Keyword(f) => f.clone(),
                    other => return Err(error(line, format!(":f {other:?}: expected a keyword"))),
                };
                let input = (reader.input)(&f, value).map_err(|m| error(line, m))?;
                pairing.invoke(process, input, line)?;
                keys.push(key);
            }
            Kind::Ok => {
                let i = pairing.end(process, line)?;
                let output =
                    (reader.output)(pairing.input(i), value).map_err(|m| error(line, m))?;
                pairing.complete(i, output, line);
            }
            Kind::Fail => {
                let i = pairing.end(process, line)?;
                match (reader.failed)(pairing.input(i)) {
                    Some(output) => pairing.complete(i, output, line),
                    None => pairing.ops[i] = None,
                }
            }
            Kind::Info => {
                pairing.end(process, line)?;
            }
        }
    }
    let mut history = Keyed::new();
    for (op, key) in pairing.ops.into_iter().zip(keys) {
        if let Some(op) = op {
            history.entry(key).or_default().push(op);
        }
    }
    Ok(history)
}

/// A key-value history in EDN (`:f` `:get`, `:put` or `:append`, string values).
pub fn kv(text: &str) -> Result<KvHistory, ParseError> {
    edn_history(
        text,
        Reader {
            input: |f, value| match (f, value) {
                ("get", _) => Ok(KvOp::Get),
                ("put", Edn::Str(v)) => Ok(KvOp::Put(v.clone())),
                ("append", Edn::Str(v)) => Ok(KvOp::Append(v.clone())),
                _ => Err(format!(
                    ":f :{f} with {value:?}: expected :get, or :put or :append with a string value"
                )),
            },
            output: |input, value| match (input, value) {
                (KvOp::Get, Edn::Str(v)) => Ok(KvOut(Some(v.clone()))),
                (KvOp::Get, Edn::Nil) => Ok(KvOut(Some(String::new()))),
                (KvOp::Get, other) => Err(format!(":value {other:?}: expected a string or nil")),
                _ => Ok(KvOut(None)),
            },
            failed: |_| None,
        },
    )
}

/// A history of integer registers in EDN, one per key (`:f` `:read`, `:write` N or `:cas`
/// `[OLD NEW]`; a read's value is N or `nil`): what `flotilla-chaos run` records.
pub fn register(text: &str) -> Result<RegisterHistory, ParseError> {
    edn_history(
        text,
        Reader {
            input: |f, value| match (f, value) {
                ("read", _) => Ok(RegisterOp::Read),
                ("write", Edn::Int(v)) => Ok(RegisterOp::Write(*v)),
                ("cas", Edn::Ints(pair)) if pair.len() == 2 => {
                    Ok(RegisterOp::Cas(pair[0], pair[1]))
                }
                _ => Err(format!(
                    ":f :{f} with {value:?}: expected :read, :write N or :cas [OLD NEW]"
                )),
            },
            output: |input, value| match (input, value) {
                (RegisterOp::Read, Edn::Int(v)) => Ok(RegisterOut::Read(Some(*v))),
                (RegisterOp::Read, Edn::Nil) => Ok(RegisterOut::Read(None)),
                (RegisterOp::Read, other) => {
                    Err(format!(":value {other:?}: expected an integer or nil"))
                }
                _ => Ok(RegisterOut::Done),
            },
            failed: |input| matches!(input, RegisterOp::Cas(..)).then_some(RegisterOut::CasFailed),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jepsen_log_pairs_calls_with_their_ends() {
        let log = "INFO  jepsen.util - 0\t:invoke\t:write\t3\n\
                   INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]\n\
                   INFO  jepsen.util - 0\t:ok\t:write\t3\n\
                   INFO  jepsen.util - 1   :fail   :cas    [3 4]\n\
                   INFO  jepsen.util - 2\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 2\t:ok\t:read\t3\n\
                   INFO  jepsen.util - 3\t:invoke\t:write\t5\n\
                   INFO  jepsen.util - 3\t:info\t:write\t:timed-out\n\
                   INFO  jepsen.util - 4\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 4\t:fail\t:read\t:timed-out\n";
        let ops = jepsen(log).unwrap();
        let summary: Vec<_> = ops
            .iter()
            .map(|o| (o.input, o.output, o.call, o.ret))
            .collect();
        assert_eq!(
            summary,
            [
                (RegisterOp::Write(3), Some(RegisterOut::Done), 1, Some(3)),
                (
                    RegisterOp::Cas(3, 4),
                    Some(RegisterOut::CasFailed),
                    2,
                    Some(4)
                ),
                (
                    RegisterOp::Read,
                    Some(RegisterOut::Read(Some(3))),
                    5,
                    Some(6)
                ),
                (RegisterOp::Write(5), None, 7, None),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let log = "INFO  jepsen.util - 0\t:invoke\t:write\t3\nINFO  jepsen.util - 0\t:invoke\t:read\tnil\n";
        assert_eq!(
            jepsen(log).unwrap_err(),
            error(
                2,
                "process 0 invokes while its operation of line 1 is still open"
            )
        );
        assert_eq!(jepsen("hello\n").unwrap_err().line, 1);
        let kv_text = "{:process 0, :type :invoke, :f :get, :key \"a\", :value nil}\n{:process 0, :type :ok, :f :get, :key \"a\" :value \"x\"\n";
        assert_eq!(kv(kv_text).unwrap_err(), error(2, "the map does not end"));
    }

    #[test]
    fn a_kv_history_is_split_by_key() {
        let text = "{:process 0, :type :invoke, :f :append, :key \"a\", :value \"x 0 0 y\"}\n\
                    {:process 1, :type :invoke, :f :get, :key \"b\", :value nil}\n\
                    {:process 0, :type :ok, :f :append, :key \"a\", :value \"x 0 0 y\"}\n\
                    {:process 1, :type :ok, :f :get, :key \"b\", :value \"\"}\n";
        let h = kv(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h["a"][0].input, KvOp::Append("x 0 0 y".into()));
        assert_eq!(h["b"][0].output, Some(KvOut(Some(String::new()))));
        assert_eq!((h["b"][0].call, h["b"][0].ret), (2, Some(4)));
    }

    #[test]
    fn a_register_history_reads_writes_and_compare_and_sets() {
        let text = "{:process 0, :type :invoke, :f :write, :key \"r1\", :value 3}\n\
                    {:process 1, :type :invoke, :f :cas, :key \"r1\", :value [3 4]}\n\
                    {:process 0, :type :ok, :f :write, :key \"r1\", :value 3}\n\
                    {:process 1, :type :fail, :f :cas, :key \"r1\", :value [3 4]}\n\
                    {:process 2, :type :invoke, :f :read, :key \"r2\", :value nil}\n\
                    {:process 2, :type :ok, :f :read, :key \"r2\", :value nil}\n";
        let h = register(text).unwrap();
        let r1: Vec<_> = h["r1"].iter().map(|o| (o.input, o.output)).collect();
        assert_eq!(
            r1,
            [
                (RegisterOp::Write(3), Some(RegisterOut::Done)),
                (RegisterOp::Cas(3, 4), Some(RegisterOut::CasFailed)),
            ]
        );
        assert_eq!(h["r2"][0].output, Some(RegisterOut::Read(None)));
    }
}
