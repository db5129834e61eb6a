//! The C ABI of the anatomy-r1 runtime (`libanatomy.so`, `libanatomy.a`, `include/anatomy.h`).
//!
//! Every entry point is wrapped in `catch_unwind`: a Rust panic (or a panic in a Rust token
//! callback) becomes [`AnatomyStatus::Panic`] / [`AnatomyStatus::CallbackPanic`] and never
//! unwinds into C. Handles carry a magic tag and are registered while alive, so a null, freed
//! (double free) or foreign handle is refused with [`AnatomyStatus::InvalidHandle`] instead of
//! being dereferenced. The details of the last failure on the calling thread are in
//! [`anatomy_last_error`].
//!
//! `unsafe` is confined to this crate; each block states its invariant.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use anatomy_models::qwen2_5_vl::preprocess::{decode_image, DecodeLimits};
use anatomy_runtime::backend::CacheType;
use anatomy_runtime::generate::{AskRequest, FinishReason, Flow, ImageInput};
use anatomy_runtime::{Answer, Model, ModelOptions, RuntimeError, SamplingParams, Session};

/// Version of this C ABI; bumped on any incompatible change of the header.
pub const ANATOMY_ABI_VERSION: u32 = 2;

/// What every call returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnatomyStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was null.
    NullPointer = 1,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 2,
    /// An argument is out of range (zero size, stride too small, unknown backend, ...).
    InvalidArgument = 3,
    /// A handle is null, already freed, or not a handle of the expected kind.
    InvalidHandle = 4,
    /// A model file could not be read or is not a supported GGUF file.
    Load = 5,
    /// The image could not be decoded or preprocessed.
    Image = 6,
    /// The runtime refused or failed the request (context overflow, bad options, no projector).
    Runtime = 7,
    /// The session is in use by another thread (one ask at a time per session).
    Busy = 8,
    /// The token callback panicked (Rust callbacks only; C++ callbacks must not throw).
    CallbackPanic = 9,
    /// The library panicked; the handle involved should be freed and not used again.
    Panic = 10,
}

/// Why generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnatomyFinishReason {
    /// A stop token.
    Stop = 0,
    /// `max_tokens` reached.
    Length = 1,
    /// The context is full.
    Context = 2,
    /// The callback returned nonzero or `anatomy_session_cancel` was called.
    Cancelled = 3,
}

/// How to load a model. Get defaults from `anatomy_model_params_default`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AnatomyModelParams {
    /// Worker threads; 0 uses the physical cores.
    pub threads: u32,
    /// KV-cache length in tokens; 0 uses min(file's context, 4096).
    pub context_length: u32,
    /// Backend name: NULL or "cpu" (the only backend so far).
    pub backend: *const c_char,
    /// Largest image in merged vision tokens; 0 keeps the processor's bound.
    pub max_image_tokens: u32,
    /// Processor pixel bounds; 0 keeps the file's value (or the Qwen2.5-VL default).
    pub min_pixels: u32,
    pub max_pixels: u32,
    /// What each session's KV cache stores: an `AnatomyCacheType` value (an integer, so that a
    /// bad value is an error, not UB).
    pub cache_type: u32,
}

/// What a KV cache stores.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnatomyCacheType {
    /// Keys and values as computed (the default; matches HF transformers' f32 run).
    F32 = 0,
    /// Rounded to f16: half the memory, as llama.cpp's default cache.
    F16 = 1,
}

/// Generation parameters. Get defaults from `anatomy_gen_params_default`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AnatomyGenParams {
    /// Most generated tokens (must be positive).
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 keeps all tokens.
    pub top_k: u32,
    /// 1 keeps all tokens.
    pub top_p: f32,
    /// 0 keeps all tokens.
    pub min_p: f32,
    /// 1 is off.
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Prompt-lookup decoding: at most this many tokens per step drafted from what followed an
    /// earlier match of the context's last tokens, and checked in the same forward pass as the
    /// chosen token. A drafted token is kept only when it is the one chosen from the true
    /// logits, so the answer is the same as with 0 (off), bit for bit; a reasoning answer that
    /// repeats the question's words decodes in fewer passes. It pays where a pass of two tokens
    /// costs little more than one, as in memory-bound decoding of a real checkpoint (1 is the
    /// setting on a 2-core CPU; see the README), not on a model small enough to stay in cache.
    pub lookup: u32,
}

/// How an image is given.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnatomyImageFormat {
    /// `data`/`len` hold a PNG or JPEG file; width, height and stride are ignored.
    Encoded = 0,
    /// `data` holds `height` rows of `width` RGB8 pixels, rows `stride` bytes apart
    /// (`stride >= 3 * width`, `len >= stride * (height - 1) + 3 * width`).
    Rgb8 = 1,
}

/// An image in memory; only read during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AnatomyImage {
    /// An `AnatomyImageFormat` value (an integer, so that a bad value is an error, not UB).
    pub format: u32,
    pub data: *const u8,
    pub len: usize,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
}

/// Timings of one answer, in milliseconds.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AnatomyTimings {
    pub load_ms: f64,
    /// Preprocessing plus the vision tower (near zero when the session had the image cached).
    pub image_encode_ms: f64,
    pub prefill_ms: f64,
    /// Prompt tokens run (those the session's context already held are not).
    pub prefill_tokens: u64,
    pub decode_ms: f64,
    pub decode_tokens: u64,
    /// Of `decode_tokens`, those whose pass had already run as a drafted token
    /// (`AnatomyGenParams::lookup`).
    pub lookup_accepted_tokens: u64,
    pub peak_rss_bytes: u64,
    /// 1 when the image's encoding came from the session's cache.
    pub image_cached: u8,
}

/// Called with each new piece of text (NUL-terminated UTF-8, valid only during the call) and the
/// `user` pointer given to `anatomy_ask`; return nonzero to stop generation. It runs on the thread
/// that called `anatomy_ask`. It must not throw a C++ exception and must not call `anatomy_ask`
/// on the same session.
pub type AnatomyTokenCallback =
    Option<unsafe extern "C-unwind" fn(piece: *const c_char, user: *mut c_void) -> c_int>;

const MODEL_MAGIC: u64 = 0x414e_4154_4d4f_4445; // "ANATMODE"
const SESSION_MAGIC: u64 = 0x414e_4154_5345_5353; // "ANATSESS"
const RESULT_MAGIC: u64 = 0x414e_4154_5245_5355; // "ANATRESU"

/// A loaded model (opaque). Shareable across threads.
pub struct AnatomyModel {
    magic: u64,
    model: Arc<Model>,
}

/// One conversation on a model (opaque). One `anatomy_ask` at a time; cancellable from any thread.
pub struct AnatomySession {
    magic: u64,
    cancel: AtomicBool,
    // Declared before `model`: dropped first, while the model it borrows is still alive.
    session: Mutex<Session<'static>>,
    #[allow(dead_code)] // only kept alive for `session`
    model: Arc<Model>,
}

/// The answer to one question (opaque, immutable).
pub struct AnatomyResult {
    magic: u64,
    answer: Answer,
    text: CString,
}

/// Live handles by address and magic: a freed or foreign pointer is refused before it is read.
fn live() -> &'static Mutex<HashSet<(usize, u64)>> {
    static LIVE: OnceLock<Mutex<HashSet<(usize, u64)>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

fn live_set() -> std::sync::MutexGuard<'static, HashSet<(usize, u64)>> {
    live().lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// An error status with its message.
struct Fail(AnatomyStatus, String);

type Res<T> = Result<T, Fail>;

fn fail<T>(status: AnatomyStatus, msg: impl Into<String>) -> Res<T> {
    Err(Fail(status, msg.into()))
}

fn runtime_status(e: &RuntimeError) -> AnatomyStatus {
    match e {
        RuntimeError::Gguf(_)
        | RuntimeError::Backend(_)
        | RuntimeError::Tokenizer(_)
        | RuntimeError::Mismatch(_)
        | RuntimeError::Unsupported { .. } => AnatomyStatus::Load,
        RuntimeError::Image(_) | RuntimeError::ImageTokens(_) => AnatomyStatus::Image,
        _ => AnatomyStatus::Runtime,
    }
}

impl From<RuntimeError> for Fail {
    fn from(e: RuntimeError) -> Self {
        Fail(runtime_status(&e), e.to_string())
    }
}

/// Runs `f` catching panics; records the error message on failure.
fn guard(name: &str, f: impl FnOnce() -> Res<()>) -> AnatomyStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => AnatomyStatus::Ok,
        Ok(Err(Fail(status, msg))) => {
            set_error(&format!("{name}: {msg}"));
            status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("{name}: internal panic: {what}"));
            AnatomyStatus::Panic
        }
    }
}

/// Handle types: a magic tag (the first field) and a name for messages.
trait Handle {
    const MAGIC: u64;
    const WHAT: &'static str;
    fn magic(&self) -> u64;
}

macro_rules! handle {
    ($t:ty, $magic:expr, $what:literal) => {
        impl Handle for $t {
            const MAGIC: u64 = $magic;
            const WHAT: &'static str = $what;
            fn magic(&self) -> u64 {
                self.magic
            }
        }
    };
}
handle!(AnatomyModel, MODEL_MAGIC, "model");
handle!(AnatomySession, SESSION_MAGIC, "session");
handle!(AnatomyResult, RESULT_MAGIC, "result");

/// A shared reference to a live handle: NULL, freed and foreign pointers are refused before
/// anything is read through them.
fn handle_ref<'a, T: Handle>(p: *const T) -> Res<&'a T> {
    let what = T::WHAT;
    if p.is_null() {
        return fail(
            AnatomyStatus::InvalidHandle,
            format!("{what} handle is NULL"),
        );
    }
    if !live_set().contains(&(p as usize, T::MAGIC)) {
        return fail(
            AnatomyStatus::InvalidHandle,
            format!("{what} handle {p:p} is freed or not a {what} handle"),
        );
    }
    // SAFETY: the registry holds exactly the pointers made by `register` and not yet released,
    // so `p` points to a live `T`; the caller contract forbids freeing it during this call. Only
    // shared access is taken (sessions mutate through their mutex and atomic).
    let r = unsafe { &*p };
    if r.magic() != T::MAGIC {
        return fail(
            AnatomyStatus::InvalidHandle,
            format!("{what} handle {p:p} has a corrupt tag"),
        );
    }
    Ok(r)
}

/// Registers a boxed handle and returns its pointer.
fn register<T: Handle>(b: Box<T>) -> *mut T {
    let p = Box::into_raw(b);
    live_set().insert((p as usize, T::MAGIC));
    p
}

/// Unregisters and frees a handle (NULL is a no-op; a freed or foreign one is an error).
fn release<T: Handle>(p: *mut T) -> Res<()> {
    let what = T::WHAT;
    if p.is_null() {
        return Ok(());
    }
    if !live_set().remove(&(p as usize, T::MAGIC)) {
        return fail(
            AnatomyStatus::InvalidHandle,
            format!("{what} handle {p:p} is already freed or not a {what} handle"),
        );
    }
    // SAFETY: `p` was registered by `register` from `Box::into_raw` and has just been removed from
    // the registry, so this is its only release.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
}

fn non_null<T>(p: *const T, what: &str) -> Res<()> {
    if p.is_null() {
        return fail(AnatomyStatus::NullPointer, format!("{what} is NULL"));
    }
    Ok(())
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives the returned reference.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Res<&'a str> {
    non_null(p, what)?;
    // SAFETY: non-null, NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| Fail(AnatomyStatus::InvalidUtf8, format!("{what}: {e}")))
}

/// Writes `v` through an out pointer checked non-null.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, v: T, what: &str) -> Res<()> {
    non_null(out, what)?;
    // SAFETY: non-null and writable per the caller's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// The library version ("0.1.0"), a static string. Thread-safe.
#[no_mangle]
pub extern "C" fn anatomy_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}

/// The ABI version (`ANATOMY_ABI_VERSION` of the library actually linked). Thread-safe.
#[no_mangle]
pub extern "C" fn anatomy_abi_version() -> u32 {
    ANATOMY_ABI_VERSION
}

/// The message of the last failed call on the calling thread ("" if none). Valid until the next
/// failing call on this thread. Thread-safe (the message is per thread).
#[no_mangle]
pub extern "C" fn anatomy_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Default model parameters (all automatic, CPU backend). Thread-safe.
#[no_mangle]
pub extern "C" fn anatomy_model_params_default() -> AnatomyModelParams {
    AnatomyModelParams {
        threads: 0,
        context_length: 0,
        backend: std::ptr::null(),
        max_image_tokens: 0,
        min_pixels: 0,
        max_pixels: 0,
        cache_type: AnatomyCacheType::F32 as u32,
    }
}

/// Default generation parameters (greedy, 256 tokens). Thread-safe.
#[no_mangle]
pub extern "C" fn anatomy_gen_params_default() -> AnatomyGenParams {
    let s = SamplingParams::default();
    AnatomyGenParams {
        max_tokens: 256,
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        lookup: 0,
    }
}

fn nonzero(v: u32) -> Option<usize> {
    (v != 0).then_some(v as usize)
}

/// Loads a model from the language-model GGUF `lm_path` and the vision projector `mmproj_path`
/// (NULL for text only). `params` may be NULL for defaults. On success `*out_model` is a new
/// handle to free with `anatomy_model_free`. Thread-safe.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `params` is NULL or valid; `out_model` is valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_model_load(
    lm_path: *const c_char,
    mmproj_path: *const c_char,
    params: *const AnatomyModelParams,
    out_model: *mut *mut AnatomyModel,
) -> AnatomyStatus {
    guard("anatomy_model_load", || {
        non_null(out_model, "out_model")?;
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out_model.write(std::ptr::null_mut()) };
        // SAFETY: per this function's contract.
        let lm = unsafe { c_str(lm_path, "lm_path") }?;
        let mmproj = if mmproj_path.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(mmproj_path, "mmproj_path") }?)
        };
        let p = if params.is_null() {
            anatomy_model_params_default()
        } else {
            // SAFETY: non-null and valid per this function's contract.
            unsafe { params.read() }
        };
        if !p.backend.is_null() {
            // SAFETY: per this function's contract (params.backend is NULL or NUL-terminated).
            let b = unsafe { c_str(p.backend, "params.backend") }?;
            if !b.eq_ignore_ascii_case("cpu") {
                return fail(
                    AnatomyStatus::InvalidArgument,
                    format!("unknown backend {b:?} (available: \"cpu\")"),
                );
            }
        }
        if lm.is_empty() {
            return fail(AnatomyStatus::InvalidArgument, "lm_path is empty");
        }
        let cache_type = match p.cache_type {
            t if t == AnatomyCacheType::F32 as u32 => CacheType::F32,
            t if t == AnatomyCacheType::F16 as u32 => CacheType::F16,
            t => {
                return fail(
                    AnatomyStatus::InvalidArgument,
                    format!("params.cache_type {t} is not an AnatomyCacheType"),
                )
            }
        };
        let opts = ModelOptions {
            threads: nonzero(p.threads),
            cache_type,
            context: nonzero(p.context_length),
            max_image_tokens: nonzero(p.max_image_tokens),
            min_pixels: nonzero(p.min_pixels),
            max_pixels: nonzero(p.max_pixels),
            // Files stay mapped through the C ABI (zero copy, shared with other processes).
            ..Default::default()
        };
        let model = Model::load(lm, mmproj.map(std::path::Path::new), &opts)?;
        let h = register(Box::new(AnatomyModel {
            magic: MODEL_MAGIC,
            model: Arc::new(model),
        }));
        // SAFETY: checked non-null above.
        unsafe { out_model.write(h) };
        Ok(())
    })
}

/// Frees a model handle (NULL is a no-op; a freed handle gives `InvalidHandle`). Sessions made
/// from it stay valid (they keep the model alive). Must not race with other calls on the same
/// model handle.
///
/// # Safety
/// `model` is NULL or a pointer returned by `anatomy_model_load`.
#[no_mangle]
pub unsafe extern "C" fn anatomy_model_free(model: *mut AnatomyModel) -> AnatomyStatus {
    guard("anatomy_model_free", || release(model))
}

/// Creates a session (KV cache and buffers) on `model`; free it with `anatomy_session_free`.
/// Thread-safe: many threads may create sessions from one model at once.
///
/// # Safety
/// `model` is a handle from `anatomy_model_load` not being freed concurrently; `out_session` is
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_session_new(
    model: *const AnatomyModel,
    out_session: *mut *mut AnatomySession,
) -> AnatomyStatus {
    guard("anatomy_session_new", || {
        non_null(out_session, "out_session")?;
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out_session.write(std::ptr::null_mut()) };
        let m = handle_ref(model)?;
        let arc = Arc::clone(&m.model);
        let session = arc.session();
        // SAFETY: the session borrows the model inside `arc`, whose heap allocation does not move
        // and is kept alive by the `model` field of the same handle; the `session` field is
        // declared before it, so it is dropped first. The 'static lifetime never escapes.
        let session: Session<'static> = unsafe { std::mem::transmute(session) };
        let h = register(Box::new(AnatomySession {
            magic: SESSION_MAGIC,
            cancel: AtomicBool::new(false),
            session: Mutex::new(session),
            model: arc,
        }));
        // SAFETY: checked non-null above.
        unsafe { out_session.write(h) };
        Ok(())
    })
}

/// Frees a session (NULL is a no-op; a freed handle gives `InvalidHandle`). Must not race with
/// any other call on the same session.
///
/// # Safety
/// `session` is NULL or a pointer returned by `anatomy_session_new`.
#[no_mangle]
pub unsafe extern "C" fn anatomy_session_free(session: *mut AnatomySession) -> AnatomyStatus {
    guard("anatomy_session_free", || release(session))
}

/// Asks the running (or the next) `anatomy_ask` on `session` to stop after the current token; it
/// then returns `Ok` with finish reason `Cancelled`. Prefill and the vision tower are not
/// interrupted. The request is consumed when an ask ends. Thread-safe: meant to be called from
/// another thread while `anatomy_ask` runs.
///
/// # Safety
/// `session` is a handle from `anatomy_session_new` not being freed concurrently.
#[no_mangle]
pub unsafe extern "C" fn anatomy_session_cancel(session: *const AnatomySession) -> AnatomyStatus {
    guard("anatomy_session_cancel", || {
        let s = handle_ref(session)?;
        s.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Forgets the conversation of `session` (its image cache stays), so that the next ask runs its
/// whole prompt, as a fresh session would. Not concurrent with `anatomy_ask` on the same session
/// (gives `Busy`).
///
/// # Safety
/// `session` is a handle from `anatomy_session_new` not being freed concurrently.
#[no_mangle]
pub unsafe extern "C" fn anatomy_session_reset(session: *const AnatomySession) -> AnatomyStatus {
    guard("anatomy_session_reset", || {
        let s = handle_ref(session)?;
        lock(s)?.reset();
        Ok(())
    })
}

fn lock(s: &AnatomySession) -> Res<std::sync::MutexGuard<'_, Session<'static>>> {
    match s.session.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => fail(
            AnatomyStatus::Busy,
            "the session is answering on another thread",
        ),
        // A panic during an earlier ask: the session may be inconsistent; reset it and go on.
        Err(TryLockError::Poisoned(p)) => {
            let mut g = p.into_inner();
            g.reset();
            s.session.clear_poison();
            Ok(g)
        }
    }
}

/// Copies an image argument into an owned input.
///
/// # Safety
/// `img.data` is NULL or valid for `img.len` bytes.
unsafe fn image_input(img: &AnatomyImage) -> Res<ImageInput> {
    non_null(img.data, "image.data")?;
    if img.len == 0 {
        return fail(AnatomyStatus::InvalidArgument, "image.len is 0");
    }
    // SAFETY: non-null and valid for `len` bytes per the caller's contract.
    let bytes = unsafe { std::slice::from_raw_parts(img.data, img.len) };
    match img.format {
        f if f == AnatomyImageFormat::Encoded as u32 => {
            let (data, width, height) = decode_image(bytes, &DecodeLimits::default())
                .map_err(|e| Fail(AnatomyStatus::Image, e.to_string()))?;
            Ok(ImageInput::Rgb8 {
                data,
                width,
                height,
            })
        }
        f if f == AnatomyImageFormat::Rgb8 as u32 => {
            let (w, h, stride) = (img.width as usize, img.height as usize, img.stride as usize);
            if w == 0 || h == 0 {
                return fail(
                    AnatomyStatus::InvalidArgument,
                    format!("image size {w}x{h} has a zero side"),
                );
            }
            let row = w
                .checked_mul(3)
                .ok_or_else(|| Fail(AnatomyStatus::InvalidArgument, "width overflows".into()))?;
            if stride < row {
                return fail(
                    AnatomyStatus::InvalidArgument,
                    format!("stride {stride} is below 3 * width = {row}"),
                );
            }
            let need = stride
                .checked_mul(h - 1)
                .and_then(|v| v.checked_add(row))
                .ok_or_else(|| {
                    Fail(
                        AnatomyStatus::InvalidArgument,
                        "image size overflows".into(),
                    )
                })?;
            if bytes.len() < need {
                return fail(
                    AnatomyStatus::InvalidArgument,
                    format!(
                        "image.len {} is below the {need} bytes {w}x{h} with stride {stride} need",
                        bytes.len()
                    ),
                );
            }
            let mut data = Vec::with_capacity(row * h);
            for y in 0..h {
                data.extend_from_slice(&bytes[y * stride..y * stride + row]);
            }
            Ok(ImageInput::Rgb8 {
                data,
                width: img.width,
                height: img.height,
            })
        }
        f => fail(
            AnatomyStatus::InvalidArgument,
            format!("image.format {f} is not an AnatomyImageFormat"),
        ),
    }
}

/// Answers `question` about `image` (NULL for none) on `session`, streaming text to `callback`
/// (NULL for none). `options` holds `n_options` option strings for a multiple-choice question
/// (NULL/0 for a free answer); `params` may be NULL for defaults. On success `*out_result` is a
/// new result to free with `anatomy_result_free`; a stop requested by the callback or by
/// `anatomy_session_cancel` is a success with finish reason `Cancelled`.
///
/// A session keeps the part of its context the new prompt starts with (the system prompt and the
/// image, when the frame is the same) and runs only the rest, as llama.cpp's server does with
/// `cache_prompt`; the logits may then differ from a fresh session's in the last bits.
/// `anatomy_session_reset` first runs the whole prompt.
///
/// Thread-safety: one ask at a time per session (a concurrent one gives `Busy`); different
/// sessions, even of one model, may ask concurrently from different threads.
///
/// # Safety
/// `session` is a handle from `anatomy_session_new` not being freed concurrently; `image` is NULL
/// or valid with `data` valid for `len` bytes; `question` and each option are NUL-terminated;
/// `options` is NULL or valid for `n_options` pointers; `params` is NULL or valid; `out_result` is
/// valid for a write; `callback` is NULL or a function safe to call with `user`.
#[no_mangle]
pub unsafe extern "C" fn anatomy_ask(
    session: *const AnatomySession,
    image: *const AnatomyImage,
    question: *const c_char,
    options: *const *const c_char,
    n_options: usize,
    params: *const AnatomyGenParams,
    callback: AnatomyTokenCallback,
    user: *mut c_void,
    out_result: *mut *mut AnatomyResult,
) -> AnatomyStatus {
    guard("anatomy_ask", || {
        non_null(out_result, "out_result")?;
        // SAFETY: checked non-null; the caller guarantees it is writable.
        unsafe { out_result.write(std::ptr::null_mut()) };
        let s = handle_ref(session)?;
        // SAFETY: per this function's contract.
        let question = unsafe { c_str(question, "question") }?.to_string();
        let mut opts = Vec::with_capacity(n_options);
        if n_options > 0 {
            non_null(options, "options")?;
            for i in 0..n_options {
                // SAFETY: `options` is valid for `n_options` pointers per the contract.
                let p = unsafe { options.add(i).read() };
                // SAFETY: each option is NULL or NUL-terminated per the contract.
                opts.push(unsafe { c_str(p, &format!("options[{i}]")) }?.to_string());
            }
        }
        let p = if params.is_null() {
            anatomy_gen_params_default()
        } else {
            // SAFETY: non-null and valid per this function's contract.
            unsafe { params.read() }
        };
        if p.max_tokens == 0 {
            return fail(AnatomyStatus::InvalidArgument, "params.max_tokens is 0");
        }
        let image = if image.is_null() {
            None
        } else {
            // SAFETY: non-null and valid per this function's contract.
            Some(unsafe { image_input(&*image) }?)
        };
        let req = AskRequest {
            question,
            image,
            options: opts,
            max_tokens: p.max_tokens as usize,
            lookup: p.lookup as usize,
            sampling: SamplingParams {
                temperature: p.temperature,
                top_k: p.top_k as usize,
                top_p: p.top_p,
                min_p: p.min_p,
                repetition_penalty: p.repetition_penalty,
                seed: p.seed,
            },
        };
        let mut guard = lock(s)?;
        let mut callback_panicked: Option<String> = None;
        let mut on_text = |piece: &str| -> Flow {
            if s.cancel.load(Ordering::SeqCst) {
                return Flow::Stop;
            }
            let Some(cb) = callback else {
                return Flow::Continue;
            };
            // Pieces are text from the tokenizer; an interior NUL is escaped rather than cut.
            let c = CString::new(piece.replace('\0', "\u{FFFD}")).unwrap_or_default();
            // SAFETY: `cb` is safe to call with `user` per the contract; `c` outlives the call.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { cb(c.as_ptr(), user) }));
            match r {
                Ok(0) => Flow::Continue,
                Ok(_) => Flow::Stop,
                Err(payload) => {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    callback_panicked.get_or_insert(what);
                    Flow::Stop
                }
            }
        };
        let answer = guard.ask(&req, &mut on_text);
        s.cancel.store(false, Ordering::SeqCst);
        if let Some(what) = callback_panicked {
            // The loop stopped mid-answer; leave the session clean for the next question.
            guard.reset();
            return fail(
                AnatomyStatus::CallbackPanic,
                format!("the token callback panicked: {what}"),
            );
        }
        let answer = answer?;
        let text = CString::new(answer.text.replace('\0', "\u{FFFD}")).unwrap_or_default();
        let h = register(Box::new(AnatomyResult {
            magic: RESULT_MAGIC,
            answer,
            text,
        }));
        // SAFETY: checked non-null above.
        unsafe { out_result.write(h) };
        Ok(())
    })
}

/// Runs `f` on a live result handle.
fn with_result(
    name: &str,
    r: *const AnatomyResult,
    f: impl FnOnce(&AnatomyResult) -> Res<()>,
) -> AnatomyStatus {
    guard(name, || f(handle_ref(r)?))
}

/// The answer's text (NUL-terminated UTF-8, owned by the result, valid until it is freed).
/// Thread-safe (results are immutable).
///
/// # Safety
/// `result` is a handle from `anatomy_ask` not being freed concurrently; `out_text` is valid for
/// a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_text(
    result: *const AnatomyResult,
    out_text: *mut *const c_char,
) -> AnatomyStatus {
    with_result("anatomy_result_text", result, |r| {
        // SAFETY: per this function's contract.
        unsafe { put(out_text, r.text.as_ptr(), "out_text") }
    })
}

/// The generated token ids (owned by the result, valid until it is freed). Thread-safe.
///
/// # Safety
/// `result` is a handle from `anatomy_ask`; both out pointers are valid for a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_tokens(
    result: *const AnatomyResult,
    out_tokens: *mut *const u32,
    out_count: *mut usize,
) -> AnatomyStatus {
    with_result("anatomy_result_tokens", result, |r| {
        non_null(out_tokens, "out_tokens")?;
        // SAFETY: per this function's contract.
        unsafe { put(out_count, r.answer.token_ids.len(), "out_count") }?;
        // SAFETY: per this function's contract.
        unsafe { put(out_tokens, r.answer.token_ids.as_ptr(), "out_tokens") }
    })
}

/// The chosen option: its index (0 for A) and letter ('A'..'Z'), or -1 and '\0' when the question
/// had no options. Either out pointer may be NULL. Thread-safe.
///
/// # Safety
/// `result` is a handle from `anatomy_ask`; each out pointer is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_choice(
    result: *const AnatomyResult,
    out_index: *mut i32,
    out_letter: *mut c_char,
) -> AnatomyStatus {
    with_result("anatomy_result_choice", result, |r| {
        let (i, l) = match r.answer.choice {
            Some(c) => ((c as u8 - b'A') as i32, c as u8 as c_char),
            None => (-1, 0),
        };
        if !out_index.is_null() {
            // SAFETY: non-null and writable per the contract.
            unsafe { out_index.write(i) };
        }
        if !out_letter.is_null() {
            // SAFETY: non-null and writable per the contract.
            unsafe { out_letter.write(l) };
        }
        Ok(())
    })
}

/// Each option's probability (normalised over the options; owned by the result), or NULL and 0
/// when the question had no options. Thread-safe.
///
/// # Safety
/// `result` is a handle from `anatomy_ask`; both out pointers are valid for a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_option_probs(
    result: *const AnatomyResult,
    out_probs: *mut *const f32,
    out_count: *mut usize,
) -> AnatomyStatus {
    with_result("anatomy_result_option_probs", result, |r| {
        non_null(out_probs, "out_probs")?;
        let (p, n) = match &r.answer.option_probs {
            Some(v) => (v.as_ptr(), v.len()),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: per this function's contract.
        unsafe { put(out_count, n, "out_count") }?;
        // SAFETY: per this function's contract.
        unsafe { put(out_probs, p, "out_probs") }
    })
}

/// Why generation ended. Thread-safe.
///
/// # Safety
/// `result` is a handle from `anatomy_ask`; `out_reason` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_finish_reason(
    result: *const AnatomyResult,
    out_reason: *mut AnatomyFinishReason,
) -> AnatomyStatus {
    with_result("anatomy_result_finish_reason", result, |r| {
        let f = match r.answer.finish {
            FinishReason::Stop => AnatomyFinishReason::Stop,
            FinishReason::Length => AnatomyFinishReason::Length,
            FinishReason::Context => AnatomyFinishReason::Context,
            FinishReason::Cancelled => AnatomyFinishReason::Cancelled,
        };
        // SAFETY: per this function's contract.
        unsafe { put(out_reason, f, "out_reason") }
    })
}

/// The answer's timings. Thread-safe.
///
/// # Safety
/// `result` is a handle from `anatomy_ask`; `out_timings` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_timings(
    result: *const AnatomyResult,
    out_timings: *mut AnatomyTimings,
) -> AnatomyStatus {
    with_result("anatomy_result_timings", result, |r| {
        let t = &r.answer.timings;
        let v = AnatomyTimings {
            load_ms: t.load_ms,
            image_encode_ms: t.image_encode_ms,
            prefill_ms: t.prefill_ms,
            prefill_tokens: t.prefill_tokens as u64,
            decode_ms: t.decode_ms,
            decode_tokens: t.decode_tokens as u64,
            lookup_accepted_tokens: t.lookup_accepted_tokens as u64,
            peak_rss_bytes: t.peak_rss_bytes,
            image_cached: t.image_cached as u8,
        };
        // SAFETY: per this function's contract.
        unsafe { put(out_timings, v, "out_timings") }
    })
}

/// Frees a result (NULL is a no-op; a freed handle gives `InvalidHandle`). Must not race with
/// other calls on the same result.
///
/// # Safety
/// `result` is NULL or a pointer returned by `anatomy_ask`.
#[no_mangle]
pub unsafe extern "C" fn anatomy_result_free(result: *mut AnatomyResult) -> AnatomyStatus {
    guard("anatomy_result_free", || release(result))
}

// The thread-safety promised in the header: models shared, sessions movable between threads.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<AnatomyModel>();
    shareable::<AnatomySession>();
    shareable::<AnatomyResult>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let st = guard("unit", || panic!("boom {}", 7));
        assert_eq!(st, AnatomyStatus::Panic);
        // SAFETY: the last-error string is valid until the next failing call on this thread.
        let msg = unsafe { CStr::from_ptr(anatomy_last_error()) };
        assert_eq!(msg.to_str().unwrap(), "unit: internal panic: boom 7");
    }
}
