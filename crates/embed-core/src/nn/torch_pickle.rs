//! `pytorch_model.bin` / `.pt` state dicts as `torch.save` writes them (its zip serialization):
//! a `data.pkl` pickle of a dict of tensors whose storages are separate, uncompressed records
//! `data/<key>` of the archive.
//!
//! The pickle is read by a small interpreter of its own that knows only what a state dict
//! needs: dicts (plain or `collections.OrderedDict`, with the `_metadata` attribute
//! `Module.state_dict()` sets), strings, numbers, tuples, lists, and tensors rebuilt by
//! `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` over `torch.*Storage` records. Any
//! other global (code, a custom class) is refused before anything is built, with the file and the
//! global named; nothing in the pickle is ever called. libtorch's own unpickler
//! (`torch::pickle_load`) is not used because it turns every `collections.OrderedDict` into
//! `None` (it expects one only as a tensor's backward hooks), so the state dicts transformers
//! and sentence-transformers have written with `torch.save(model.state_dict())` fail in it with
//! "Expected GenericDict but got None".
//!
//! The legacy (pre-1.6, non-zip) format is refused with how to convert it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use tch::Kind;

use crate::{Error, Result};

/// One tensor of a state dict, as a strided view of bytes in the file.
#[derive(Debug)]
pub(crate) struct StoredTensor {
    pub(crate) kind: Kind,
    pub(crate) shape: Vec<i64>,
    /// Element strides of the view, relative to `start`.
    pub(crate) stride: Vec<i64>,
    /// Byte range of the file that the view spans (first to last element it reads).
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The first bytes of a zip archive (a local file header).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// Pickle protocol 2 followed by LONG1 of 10 bytes: the magic number that opens the legacy format.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a";

fn refused(path: &Path, reason: impl Into<String>) -> Error {
    Error::PickleRefused { path: path.into(), reason: reason.into() }
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidWeights { path: path.into(), reason: reason.into() }
}

/// Reads the state dict in `bytes` (the whole file `path`): tensor name → where its bytes are.
pub(crate) fn read_state_dict(path: &Path, bytes: &[u8]) -> Result<Vec<(String, StoredTensor)>> {
    if bytes.starts_with(LEGACY_MAGIC) {
        return Err(Error::LegacyTorchFormat { path: path.into() });
    }
    if !bytes.starts_with(ZIP_MAGIC) {
        return Err(invalid(path, "not a torch.save zip archive (nor a safetensors file by its name)"));
    }
    let records = Records::read(path, bytes)?;
    let order = records.byte_order(bytes);
    if order.is_some_and(|o| o != "little") {
        return Err(invalid(path, format!("the tensors are stored {} endian; only little endian is read", order.unwrap_or_default())));
    }
    let (start, end) = records.get("data.pkl").ok_or_else(|| invalid(path, "the archive has no data.pkl"))?;
    let root = Unpickler { path, data: &bytes[start..end], pos: 0 }.run()?;
    let Value::Dict(items) = root else {
        return Err(refused(path, format!("the pickle holds {}, not a dict of tensors", root.describe())));
    };
    let items = items.borrow();
    let mut out = Vec::with_capacity(items.len());
    for (key, value) in items.iter() {
        let Value::Str(name) = key else {
            return Err(refused(path, format!("a key is {}, not a tensor name", key.describe())));
        };
        let Value::Tensor(t) = value else {
            return Err(refused(path, format!("entry {name:?} is {}, not a tensor", value.describe())));
        };
        out.push((name.clone(), t.locate(path, name, &records)?));
    }
    Ok(out)
}

/// The archive's uncompressed records by name below its top folder (`data.pkl`, `data/0`, …).
struct Records(HashMap<String, (usize, usize)>);

impl Records {
    fn read(path: &Path, bytes: &[u8]) -> Result<Records> {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| invalid(path, format!("not a readable zip archive: {e}")))?;
        let mut map = HashMap::with_capacity(zip.len());
        for i in 0..zip.len() {
            let f = zip.by_index_raw(i).map_err(|e| invalid(path, format!("zip entry {i}: {e}")))?;
            // torch.save puts everything in one folder named after the file (`archive/` today).
            let Some((_, name)) = f.name().split_once('/') else { continue };
            if f.compression() != zip::CompressionMethod::Stored {
                return Err(invalid(path, format!("record {name:?} is compressed ({:?}); torch.save stores records uncompressed", f.compression())));
            }
            let start = usize::try_from(f.data_start()).ok();
            let end = start.zip(usize::try_from(f.size()).ok()).and_then(|(s, n)| s.checked_add(n));
            match (start, end) {
                (Some(s), Some(e)) if e <= bytes.len() => {
                    map.insert(name.to_string(), (s, e));
                }
                _ => return Err(invalid(path, format!("record {name:?} runs past the end of the file (truncated?)"))),
            }
        }
        Ok(Records(map))
    }

    fn get(&self, name: &str) -> Option<(usize, usize)> {
        self.0.get(name).copied()
    }

    fn byte_order<'b>(&self, bytes: &'b [u8]) -> Option<&'b str> {
        let (s, e) = self.get("byteorder")?;
        std::str::from_utf8(&bytes[s..e]).ok().map(str::trim)
    }
}

/// A callable the pickle may name; every other global is refused.
#[derive(Clone, Copy, Debug)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Kind),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", storage) => Global::Storage(match storage {
                "FloatStorage" => Kind::Float,
                "DoubleStorage" => Kind::Double,
                "HalfStorage" => Kind::Half,
                "BFloat16Storage" => Kind::BFloat16,
                "LongStorage" => Kind::Int64,
                "IntStorage" => Kind::Int,
                "ShortStorage" => Kind::Int16,
                "CharStorage" => Kind::Int8,
                "ByteStorage" => Kind::Uint8,
                "BoolStorage" => Kind::Bool,
                _ => return None,
            }),
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Storage {
    kind: Kind,
    key: String,
    numel: i64,
}

#[derive(Debug)]
struct TensorView {
    storage: Rc<Storage>,
    offset: i64,
    shape: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorView {
    /// Checks the view against its storage record and returns the bytes it spans.
    fn locate(&self, path: &Path, name: &str, records: &Records) -> Result<StoredTensor> {
        let s = &self.storage;
        let bad = |what: String| invalid(path, format!("tensor {name:?}: {what}"));
        let (rs, re) = records.get(&format!("data/{}", s.key)).ok_or_else(|| bad(format!("storage record data/{} is missing", s.key)))?;
        let elt = s.kind.elt_size_in_bytes();
        let numel = usize::try_from(s.numel).map_err(|_| bad(format!("storage of {} elements", s.numel)))?;
        if numel.checked_mul(elt) != Some(re - rs) {
            return Err(bad(format!("storage record data/{} has {} bytes, {numel} {:?} elements need {}", s.key, re - rs, s.kind, numel * elt)));
        }
        if self.shape.len() != self.stride.len() || self.shape.iter().chain(&self.stride).any(|&d| d < 0) || self.offset < 0 {
            return Err(bad(format!("invalid view (offset {}, shape {:?}, stride {:?})", self.offset, self.shape, self.stride)));
        }
        let empty = self.shape.contains(&0);
        // The last element the view reads: offset + Σ (size - 1) · stride.
        let last = self.shape.iter().zip(&self.stride).try_fold(self.offset, |acc, (&n, &st)| {
            if n == 0 {
                Some(acc)
            } else {
                (n - 1).checked_mul(st).and_then(|d| acc.checked_add(d))
            }
        });
        let (first, end) = match last {
            _ if empty => (0, 0),
            Some(l) if l < s.numel => (self.offset as usize, l as usize + 1),
            _ => return Err(bad(format!("the view (offset {}, shape {:?}, stride {:?}) reads past its storage of {} elements", self.offset, self.shape, self.stride, s.numel))),
        };
        Ok(StoredTensor { kind: s.kind, shape: self.shape.clone(), stride: self.stride.clone(), start: rs + first * elt, end: rs + end * elt })
    }
}

type Shared<T> = Rc<RefCell<T>>;

#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(usize),
    Tuple(Rc<Vec<Value>>),
    List(Shared<Vec<Value>>),
    Dict(Shared<Vec<(Value, Value)>>),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorView>),
}

impl Value {
    /// What the value is, for a refusal's message.
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(s) => format!("the str {s:?}"),
            Value::Bytes(n) => format!("{n} bytes"),
            Value::Tuple(t) => format!("a tuple of {}", t.len()),
            Value::List(l) => format!("a list of {}", l.borrow().len()),
            Value::Dict(d) => format!("a dict of {}", d.borrow().len()),
            Value::Global(g) => format!("the global {g:?}"),
            Value::Storage(_) => "a bare storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }
}

/// One stack slot: a value, or a MARK.
enum Slot {
    Mark,
    Value(Value),
}

struct Unpickler<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl Unpickler<'_> {
    fn corrupt(&self, what: impl std::fmt::Display) -> Error {
        invalid(self.path, format!("data.pkl at byte {}: {what}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| self.corrupt("the pickle ends early"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn len_u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.corrupt("a GLOBAL without its newline"))?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| self.corrupt("a GLOBAL name that is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<String> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.corrupt("a string that is not UTF-8"))
    }

    fn pop(&self, stack: &mut Vec<Slot>) -> Result<Value> {
        match stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.corrupt("a MARK where a value belongs")),
            None => Err(self.corrupt("the stack is empty")),
        }
    }

    /// Pops the values down to the last MARK (and the mark).
    fn pop_mark(&self, stack: &mut Vec<Slot>) -> Result<Vec<Value>> {
        let at = stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or_else(|| self.corrupt("no MARK on the stack"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items.into_iter().map(|s| match s {
            Slot::Value(v) => v,
            Slot::Mark => unreachable!("the last mark is at `at`"),
        }).collect())
    }

    fn top(&self, stack: &[Slot]) -> Result<Value> {
        match stack.last() {
            Some(Slot::Value(v)) => Ok(v.clone()),
            _ => Err(self.corrupt("no value on the stack")),
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        Global::resolve(module, name).map(Value::Global).ok_or_else(|| {
            refused(self.path, format!("its pickle names the global {module}.{name}, which is not part of a state dict of tensors"))
        })
    }

    fn run(mut self) -> Result<Value> {
        let mut stack: Vec<Slot> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(&mut stack),
                b'(' => stack.push(Slot::Mark),
                b'}' => stack.push(Slot::Value(Value::Dict(Rc::default()))),
                b']' => stack.push(Slot::Value(Value::List(Rc::default()))),
                b')' => stack.push(Slot::Value(Value::Tuple(Rc::default()))),
                b't' => {
                    let items = self.pop_mark(&mut stack)?;
                    stack.push(Slot::Value(Value::Tuple(Rc::new(items))));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if stack.len() < n {
                        return Err(self.corrupt("a TUPLE with too few values"));
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(&mut stack)?);
                    }
                    items.reverse();
                    stack.push(Slot::Value(Value::Tuple(Rc::new(items))));
                }
                b'X' => {
                    let n = self.len_u32()?;
                    let s = self.text(n)?;
                    stack.push(Slot::Value(Value::Str(s)));
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let s = self.text(n)?;
                    stack.push(Slot::Value(Value::Str(s)));
                }
                0x8d => {
                    let n = usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| self.corrupt("a string longer than memory"))?;
                    let s = self.text(n)?;
                    stack.push(Slot::Value(Value::Str(s)));
                }
                b'B' | b'C' => {
                    let n = if op == b'B' { self.len_u32()? } else { usize::from(self.u8()?) };
                    self.take(n)?;
                    stack.push(Slot::Value(Value::Bytes(n)));
                }
                b'J' => stack.push(Slot::Value(Value::Int(i64::from(i32::from_le_bytes(self.le()?))))),
                b'K' => stack.push(Slot::Value(Value::Int(i64::from(self.u8()?)))),
                b'M' => stack.push(Slot::Value(Value::Int(i64::from(u16::from_le_bytes(self.le()?))))),
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(self.corrupt(format!("an integer of {n} bytes")));
                    }
                    // Little-endian two's complement, sign-extended from its last byte.
                    let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
                    let mut full = [fill; 8];
                    full[..n].copy_from_slice(bytes);
                    stack.push(Slot::Value(Value::Int(i64::from_le_bytes(full))));
                }
                b'G' => {
                    let b: [u8; 8] = self.le()?;
                    stack.push(Slot::Value(Value::Float(f64::from_be_bytes(b))));
                }
                b'N' => stack.push(Slot::Value(Value::None)),
                0x88 => stack.push(Slot::Value(Value::Bool(true))),
                0x89 => stack.push(Slot::Value(Value::Bool(false))),
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => u32::from(self.u8()?),
                        b'r' => u32::from_le_bytes(self.le()?),
                        _ => u32::try_from(memo.len()).map_err(|_| self.corrupt("too many memo entries"))?,
                    };
                    let v = self.top(&stack)?;
                    memo.insert(key, v);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' { u32::from(self.u8()?) } else { u32::from_le_bytes(self.le()?) };
                    let v = memo.get(&key).cloned().ok_or_else(|| self.corrupt(format!("memo entry {key} is not set")))?;
                    stack.push(Slot::Value(v));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    stack.push(Slot::Value(self.global(&module, &name)?));
                }
                0x93 => {
                    let name = self.pop(&mut stack)?;
                    let module = self.pop(&mut stack)?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.corrupt("a STACK_GLOBAL whose names are not strings"));
                    };
                    stack.push(Slot::Value(self.global(&module, &name)?));
                }
                b'R' => {
                    let args = self.pop(&mut stack)?;
                    let callable = self.pop(&mut stack)?;
                    let v = self.reduce(callable, args)?;
                    stack.push(Slot::Value(v));
                }
                b'b' => {
                    let state = self.pop(&mut stack)?;
                    // `Module.state_dict()` sets `_metadata` (versions per submodule) on its
                    // OrderedDict; pickle restores it with BUILD. It holds no tensor.
                    match (self.top(&stack)?, &state) {
                        (Value::Dict(_), Value::Dict(_) | Value::None) => {}
                        (target, _) => return Err(refused(self.path, format!("its pickle sets the state of {} (only a dict's attributes are read)", target.describe()))),
                    }
                }
                b'Q' => {
                    let pid = self.pop(&mut stack)?;
                    let v = self.persistent(pid)?;
                    stack.push(Slot::Value(v));
                }
                b's' => {
                    let value = self.pop(&mut stack)?;
                    let key = self.pop(&mut stack)?;
                    self.dict_insert(&stack, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark(&mut stack)?;
                    if items.len() % 2 != 0 {
                        return Err(self.corrupt("SETITEMS with a key and no value"));
                    }
                    self.dict_insert(&stack, items)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop(&mut stack)?] } else { self.pop_mark(&mut stack)? };
                    match self.top(&stack)? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => return Err(self.corrupt(format!("APPEND to {}", other.describe()))),
                    }
                }
                other => {
                    return Err(refused(self.path, format!("its pickle uses opcode 0x{other:02x}, which torch.save does not write for a state dict")));
                }
            }
        }
    }

    fn dict_insert(&self, stack: &[Slot], items: Vec<Value>) -> Result<()> {
        let Value::Dict(d) = self.top(stack)? else {
            return Err(self.corrupt("SETITEM on something that is not a dict"));
        };
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn persistent(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(t) = &pid else {
            return Err(self.corrupt(format!("a persistent id that is {}", pid.describe())));
        };
        match t.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), Value::Int(numel)] if tag == "storage" => {
                Ok(Value::Storage(Rc::new(Storage { kind: *kind, key: key.clone(), numel: *numel })))
            }
            _ => Err(refused(self.path, format!("its pickle has a persistent id that is not a typed storage ({} items)", t.len()))),
        }
    }

    fn ints(&self, v: &Value, what: &str) -> Result<Vec<i64>> {
        match v {
            Value::Tuple(t) => t.iter().map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(self.corrupt(format!("{what} holds {}", other.describe()))),
            }).collect(),
            other => Err(self.corrupt(format!("{what} is {}", other.describe()))),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.corrupt(format!("REDUCE with arguments {}", args.describe())));
        };
        match callable {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Rc::default())),
            Value::Global(Global::RebuildTensor) => match args.as_slice() {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                [Value::Storage(storage), Value::Int(offset), size, stride, _, _, ..] if args.len() <= 7 => {
                    Ok(Value::Tensor(Rc::new(TensorView {
                        storage: storage.clone(),
                        offset: *offset,
                        shape: self.ints(size, "a tensor's size")?,
                        stride: self.ints(stride, "a tensor's stride")?,
                    })))
                }
                _ => Err(self.corrupt(format!("_rebuild_tensor_v2 with {} unexpected arguments", args.len()))),
            },
            // (data, requires_grad, backward_hooks): an nn.Parameter is its tensor here.
            Value::Global(Global::RebuildParameter) => match args.first() {
                Some(Value::Tensor(t)) if args.len() == 3 => Ok(Value::Tensor(t.clone())),
                _ => Err(self.corrupt("_rebuild_parameter without a tensor")),
            },
            other => Err(refused(self.path, format!("its pickle calls {} with {} arguments", other.describe(), args.len()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Value> {
        Unpickler { path: Path::new("t.bin"), data: pickle, pos: 0 }.run()
    }

    #[test]
    fn an_ordered_dict_with_metadata_reads_as_a_dict() {
        // OrderedDict() ; SETITEMS {'a': 1} ; BUILD {'_metadata': {}} ; STOP
        let p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aK\x01u}X\x09\x00\x00\x00_metadata}sb.";
        let Value::Dict(d) = run(p).unwrap() else { panic!("not a dict") };
        let d = d.borrow();
        assert_eq!(d.len(), 1);
        assert!(matches!(&d[0], (Value::Str(k), Value::Int(1)) if k == "a"));
    }

    #[test]
    fn a_global_outside_the_allow_list_is_refused_by_name() {
        let p = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.";
        let err = run(p).unwrap_err();
        assert!(matches!(&err, Error::PickleRefused { .. }), "{err:?}");
        assert!(err.to_string().contains("posix.system") && err.to_string().contains("t.bin"), "{err}");
    }

    #[test]
    fn long1_sign_extends_and_a_truncated_pickle_is_invalid() {
        let Value::Int(i) = run(b"\x8a\x02\x00\xff.").unwrap() else { panic!() };
        assert_eq!(i, -256);
        let Value::Int(i) = run(b"\x8a\x02\xff\x00.").unwrap() else { panic!() };
        assert_eq!(i, 255);
        assert!(matches!(run(b"\x80\x02X\x05\x00\x00\x00ab"), Err(Error::InvalidWeights { .. })));
    }
}
