//! The C ABI exercised through its `extern "C"` functions, as a C caller would: every bad-input
//! case gives its status code and a message (never a crash), handles are checked (double free,
//! foreign pointers), callbacks can stop or panic, cancellation works from another thread, and a
//! real answer on the llama.cpp-converted `square` fixture gives HF's greedy tokens, and prompt-lookup
//! decoding gives the same answer as plain decoding on the demo model.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

use anatomy::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn reference() -> serde_json::Value {
    let p = root().join("tests/fixtures/qwen2_5_vl/square/reference.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated per-thread string, valid until the next failing call.
    unsafe { CStr::from_ptr(anatomy_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

/// Loads the llama.cpp-made square pair with the fixture's processor pixel bounds.
fn load() -> *mut AnatomyModel {
    load_with(AnatomyCacheType::F32)
}

fn load_with(cache: AnatomyCacheType) -> *mut AnatomyModel {
    let r = reference();
    let files = root().join("tests/fixtures/gguf/llamacpp");
    let lm = cstr(files.join("square-f32.gguf").to_str().unwrap());
    let mm = cstr(files.join("square-f32-mmproj.gguf").to_str().unwrap());
    let mut p = anatomy_model_params_default();
    p.threads = 2;
    p.cache_type = cache as u32;
    p.min_pixels = r["min_pixels"].as_u64().unwrap() as u32;
    p.max_pixels = r["max_pixels"].as_u64().unwrap() as u32;
    let backend = cstr("cpu");
    p.backend = backend.as_ptr();
    let mut m = null_mut();
    // SAFETY: valid strings, params and out pointer.
    let st = unsafe { anatomy_model_load(lm.as_ptr(), mm.as_ptr(), &p, &mut m) };
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    assert!(!m.is_null());
    m
}

/// HF's 16 greedy tokens for the fixture question.
fn greedy_tokens() -> Vec<u32> {
    reference()["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn session(m: *const AnatomyModel) -> *mut AnatomySession {
    let mut s = null_mut();
    // SAFETY: live model, valid out pointer.
    assert_eq!(unsafe { anatomy_session_new(m, &mut s) }, AnatomyStatus::Ok);
    s
}

fn png() -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/qwen2_5_vl/square/image.png")).unwrap()
}

fn encoded(bytes: &[u8]) -> AnatomyImage {
    AnatomyImage {
        format: AnatomyImageFormat::Encoded as u32,
        data: bytes.as_ptr(),
        len: bytes.len(),
        width: 0,
        height: 0,
        stride: 0,
    }
}

fn params(max_tokens: u32) -> AnatomyGenParams {
    let mut p = anatomy_gen_params_default();
    p.max_tokens = max_tokens;
    p
}

/// `anatomy_ask` with the fixture question; returns the status and the result (NULL on error).
fn ask(
    s: *const AnatomySession,
    image: Option<&AnatomyImage>,
    options: &[&str],
    max_tokens: u32,
    cb: AnatomyTokenCallback,
    user: *mut c_void,
) -> (AnatomyStatus, *mut AnatomyResult) {
    let q = cstr(reference()["question"].as_str().unwrap());
    let opts: Vec<CString> = options.iter().map(|o| cstr(o)).collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let p = params(max_tokens);
    let mut r = null_mut();
    // SAFETY: all pointers valid for the call.
    let st = unsafe {
        anatomy_ask(
            s,
            image.map_or(null(), |i| i as *const _),
            q.as_ptr(),
            if ptrs.is_empty() {
                null()
            } else {
                ptrs.as_ptr()
            },
            ptrs.len(),
            &p,
            cb,
            user,
            &mut r,
        )
    };
    (st, r)
}

fn tokens(r: *const AnatomyResult) -> Vec<u32> {
    let (mut p, mut n) = (null(), 0usize);
    // SAFETY: live result, valid out pointers.
    assert_eq!(
        unsafe { anatomy_result_tokens(r, &mut p, &mut n) },
        AnatomyStatus::Ok
    );
    // SAFETY: the result owns `n` ids at `p` until freed.
    unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
}

fn text(r: *const AnatomyResult) -> String {
    let mut p = null();
    // SAFETY: live result, valid out pointer.
    assert_eq!(unsafe { anatomy_result_text(r, &mut p) }, AnatomyStatus::Ok);
    // SAFETY: NUL-terminated, owned by the result.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

fn finish(r: *const AnatomyResult) -> AnatomyFinishReason {
    let mut f = AnatomyFinishReason::Stop;
    // SAFETY: live result, valid out pointer.
    assert_eq!(
        unsafe { anatomy_result_finish_reason(r, &mut f) },
        AnatomyStatus::Ok
    );
    f
}

fn free_result(r: *mut AnatomyResult) {
    // SAFETY: a live result.
    assert_eq!(unsafe { anatomy_result_free(r) }, AnatomyStatus::Ok);
}

#[test]
fn version() {
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(anatomy_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(anatomy_abi_version(), ANATOMY_ABI_VERSION);
}

#[test]
fn load_errors() {
    let mut m = null_mut();
    let bad = [b'a', 0xff, b'b', 0];
    let missing = cstr("/nonexistent/model.gguf");
    // SAFETY (all calls): pointers are NULL or valid; the function checks them.
    unsafe {
        assert_eq!(
            anatomy_model_load(null(), null(), null(), &mut m),
            AnatomyStatus::NullPointer
        );
        assert!(last_error().contains("lm_path is NULL"), "{}", last_error());
        assert!(m.is_null());
        assert_eq!(
            anatomy_model_load(missing.as_ptr(), null(), null(), null_mut()),
            AnatomyStatus::NullPointer
        );
        assert!(last_error().contains("out_model"));
        assert_eq!(
            anatomy_model_load(bad.as_ptr().cast(), null(), null(), &mut m),
            AnatomyStatus::InvalidUtf8
        );
        let empty = cstr("");
        assert_eq!(
            anatomy_model_load(empty.as_ptr(), null(), null(), &mut m),
            AnatomyStatus::InvalidArgument
        );
        assert_eq!(
            anatomy_model_load(missing.as_ptr(), null(), null(), &mut m),
            AnatomyStatus::Load
        );
        assert!(
            last_error().contains("/nonexistent/model.gguf"),
            "{}",
            last_error()
        );
        let mut p = anatomy_model_params_default();
        let gpu = cstr("metal");
        p.backend = gpu.as_ptr();
        assert_eq!(
            anatomy_model_load(missing.as_ptr(), null(), &p, &mut m),
            AnatomyStatus::InvalidArgument
        );
        assert!(last_error().contains("metal"));
        assert!(m.is_null());
        let mut p = anatomy_model_params_default();
        p.cache_type = 7;
        assert_eq!(
            anatomy_model_load(missing.as_ptr(), null(), &p, &mut m),
            AnatomyStatus::InvalidArgument
        );
        assert!(last_error().contains("cache_type 7"), "{}", last_error());
        assert!(m.is_null());
    }
}

#[test]
fn handles_are_checked() {
    let m = load();
    let s = session(m);
    let mut out = null_mut();
    let mut fake = [0u64; 8];
    // SAFETY (all calls): handles are live, NULL, freed or foreign; the library checks them
    // against its registry before reading through them.
    unsafe {
        assert_eq!(
            anatomy_session_new(null(), &mut out),
            AnatomyStatus::InvalidHandle
        );
        assert_eq!(
            anatomy_session_new(m, null_mut()),
            AnatomyStatus::NullPointer
        );
        // A foreign pointer, and a handle of another kind.
        let foreign = fake.as_mut_ptr().cast::<AnatomySession>();
        assert_eq!(
            anatomy_session_cancel(foreign),
            AnatomyStatus::InvalidHandle
        );
        assert_eq!(
            anatomy_session_cancel(m.cast::<AnatomySession>()),
            AnatomyStatus::InvalidHandle
        );
        assert_eq!(
            anatomy_model_free(s.cast::<AnatomyModel>()),
            AnatomyStatus::InvalidHandle
        );
        assert_eq!(
            anatomy_result_free(foreign.cast()),
            AnatomyStatus::InvalidHandle
        );
        // NULL frees are no-ops.
        assert_eq!(anatomy_model_free(null_mut()), AnatomyStatus::Ok);
        assert_eq!(anatomy_session_free(null_mut()), AnatomyStatus::Ok);
        assert_eq!(anatomy_result_free(null_mut()), AnatomyStatus::Ok);

        // The model may go before its sessions: they keep it alive.
        assert_eq!(anatomy_model_free(m), AnatomyStatus::Ok);
        assert_eq!(anatomy_model_free(m), AnatomyStatus::InvalidHandle);
        assert!(last_error().contains("already freed"), "{}", last_error());
        assert_eq!(
            anatomy_session_new(m, &mut out),
            AnatomyStatus::InvalidHandle
        );
        let (st, r) = ask(s, None, &[], 2, None, null_mut());
        assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
        assert_eq!(tokens(r).len(), 2);
        free_result(r);
        assert_eq!(anatomy_result_free(r), AnatomyStatus::InvalidHandle);
        let mut t = null();
        assert_eq!(anatomy_result_text(r, &mut t), AnatomyStatus::InvalidHandle);

        assert_eq!(anatomy_session_free(s), AnatomyStatus::Ok);
        assert_eq!(anatomy_session_free(s), AnatomyStatus::InvalidHandle);
        let (st, r) = ask(s, None, &[], 2, None, null_mut());
        assert_eq!((st, r), (AnatomyStatus::InvalidHandle, null_mut()));
    }
}

#[test]
fn ask_errors() {
    let m = load();
    let s = session(m);
    let q = cstr("What is this?");
    let bad = [b'x', 0xc3, 0x28, 0];
    let p = params(4);
    let mut r = null_mut();
    let png = png();
    // SAFETY (all calls): pointers are NULL or valid; the library checks them.
    unsafe {
        let call = |img: *const AnatomyImage,
                    q: *const c_char,
                    opts: *const *const c_char,
                    n: usize,
                    p: *const AnatomyGenParams,
                    r: *mut *mut AnatomyResult| {
            anatomy_ask(s, img, q, opts, n, p, None, null_mut(), r)
        };
        assert_eq!(
            call(null(), q.as_ptr(), null(), 0, &p, null_mut()),
            AnatomyStatus::NullPointer
        );
        assert_eq!(
            call(null(), null(), null(), 0, &p, &mut r),
            AnatomyStatus::NullPointer
        );
        assert!(last_error().contains("question is NULL"));
        assert_eq!(
            call(null(), bad.as_ptr().cast(), null(), 0, &p, &mut r),
            AnatomyStatus::InvalidUtf8
        );
        // Options: NULL array with a count, a NULL entry, invalid UTF-8, an empty option.
        assert_eq!(
            call(null(), q.as_ptr(), null(), 2, &p, &mut r),
            AnatomyStatus::NullPointer
        );
        let a = cstr("liver");
        let empty = cstr(" ");
        for (opts, want) in [
            (vec![a.as_ptr(), null()], AnatomyStatus::NullPointer),
            (
                vec![a.as_ptr(), bad.as_ptr().cast()],
                AnatomyStatus::InvalidUtf8,
            ),
            (vec![a.as_ptr(), empty.as_ptr()], AnatomyStatus::Runtime),
        ] {
            assert_eq!(
                call(null(), q.as_ptr(), opts.as_ptr(), opts.len(), &p, &mut r),
                want,
                "{}",
                last_error()
            );
        }
        let zero = params(0);
        assert_eq!(
            call(null(), q.as_ptr(), null(), 0, &zero, &mut r),
            AnatomyStatus::InvalidArgument
        );
        // Images: NULL data, zero length, garbage bytes, bad format, bad RGB8 geometry.
        let mut img = encoded(&png);
        img.data = null();
        assert_eq!(
            call(&img, q.as_ptr(), null(), 0, &p, &mut r),
            AnatomyStatus::NullPointer
        );
        let mut img = encoded(&png);
        img.len = 0;
        assert_eq!(
            call(&img, q.as_ptr(), null(), 0, &p, &mut r),
            AnatomyStatus::InvalidArgument
        );
        let garbage = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            call(&encoded(&garbage), q.as_ptr(), null(), 0, &p, &mut r),
            AnatomyStatus::Image
        );
        let mut img = encoded(&png);
        img.format = 7;
        assert_eq!(
            call(&img, q.as_ptr(), null(), 0, &p, &mut r),
            AnatomyStatus::InvalidArgument
        );
        let px = vec![0u8; 30 * 20 * 3];
        for (w, h, stride, len) in [
            (0, 20, 90, px.len()),
            (30, 0, 90, px.len()),
            (30, 20, 89, px.len()),
            (30, 20, 90, px.len() - 1),
        ] {
            let img = AnatomyImage {
                format: AnatomyImageFormat::Rgb8 as u32,
                data: px.as_ptr(),
                len,
                width: w,
                height: h,
                stride,
            };
            assert_eq!(
                call(&img, q.as_ptr(), null(), 0, &p, &mut r),
                AnatomyStatus::InvalidArgument,
                "{w}x{h} stride {stride} len {len}"
            );
        }
        assert!(r.is_null());
        // After all that the session still answers.
        let (st, r) = ask(s, Some(&encoded(&png)), &[], 3, None, null_mut());
        assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
        assert_eq!(tokens(r).len(), 3);
        free_result(r);
        assert_eq!(anatomy_session_free(s), AnatomyStatus::Ok);
        assert_eq!(anatomy_model_free(m), AnatomyStatus::Ok);
    }
}

/// An f16 KV cache through the C ABI: HF's greedy tokens still (the runtime's tests bound how far
/// it moves the logits).
#[test]
fn an_f16_cache_keeps_hf_greedy_tokens() {
    let m = load_with(AnatomyCacheType::F16);
    let s = session(m);
    let want = greedy_tokens();
    let png = png();
    let (st, r) = ask(
        s,
        Some(&encoded(&png)),
        &[],
        want.len() as u32,
        None,
        null_mut(),
    );
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    assert_eq!(tokens(r), want);
    free_result(r);
    // SAFETY: live handles, freed once.
    unsafe {
        anatomy_session_free(s);
        anatomy_model_free(m);
    }
}

#[test]
fn greedy_answer_matches_hf() {
    let m = load();
    let s = session(m);
    let want = greedy_tokens();

    extern "C-unwind" fn collect(piece: *const c_char, user: *mut c_void) -> c_int {
        // SAFETY: `user` is the `String` passed below; `piece` is NUL-terminated.
        let out = unsafe { &mut *user.cast::<String>() };
        out.push_str(unsafe { CStr::from_ptr(piece) }.to_str().unwrap());
        0
    }
    let png = png();
    let mut streamed = String::new();
    let (st, r) = ask(
        s,
        Some(&encoded(&png)),
        &[],
        want.len() as u32,
        Some(collect),
        (&mut streamed as *mut String).cast(),
    );
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    assert_eq!(tokens(r), want, "HF's greedy tokens");
    assert_eq!(text(r), streamed, "the streamed pieces make the text");
    assert_eq!(finish(r), AnatomyFinishReason::Length);
    let mut t = AnatomyTimings::default();
    // SAFETY: live result, valid out pointer.
    assert_eq!(
        unsafe { anatomy_result_timings(r, &mut t) },
        AnatomyStatus::Ok
    );
    assert!(t.prefill_tokens > 16, "{t:?}");
    assert_eq!(t.decode_tokens as usize, want.len() - 1);
    assert_eq!(t.image_cached, 0);
    let (mut idx, mut letter) = (5, 5 as c_char);
    // SAFETY: live result, valid out pointers.
    assert_eq!(
        unsafe { anatomy_result_choice(r, &mut idx, &mut letter) },
        AnatomyStatus::Ok
    );
    assert_eq!((idx, letter), (-1, 0));
    let (mut p, mut n) = (null(), 9usize);
    // SAFETY: live result, valid out pointers.
    assert_eq!(
        unsafe { anatomy_result_option_probs(r, &mut p, &mut n) },
        AnatomyStatus::Ok
    );
    assert_eq!((p, n), (null(), 0));
    free_result(r);

    // The same frame as raw RGB8 rows with padding: same tokens, and the vision tower is skipped.
    let (rgb, w, h) = anatomy_models::qwen2_5_vl::preprocess::decode_image(
        &png,
        &anatomy_models::qwen2_5_vl::preprocess::DecodeLimits::default(),
    )
    .unwrap();
    let stride = w as usize * 3 + 5;
    let mut padded = vec![0xabu8; stride * h as usize];
    for y in 0..h as usize {
        padded[y * stride..y * stride + w as usize * 3]
            .copy_from_slice(&rgb[y * w as usize * 3..(y + 1) * w as usize * 3]);
    }
    let img = AnatomyImage {
        format: AnatomyImageFormat::Rgb8 as u32,
        data: padded.as_ptr(),
        len: padded.len(),
        width: w,
        height: h,
        stride: stride as u32,
    };
    // SAFETY: live session.
    assert_eq!(unsafe { anatomy_session_reset(s) }, AnatomyStatus::Ok);
    let (st, r) = ask(s, Some(&img), &[], want.len() as u32, None, null_mut());
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    assert_eq!(tokens(r), want);
    // SAFETY: live result, valid out pointer.
    assert_eq!(
        unsafe { anatomy_result_timings(r, &mut t) },
        AnatomyStatus::Ok
    );
    assert_eq!(t.image_cached, 1);
    free_result(r);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(anatomy_session_free(s), AnatomyStatus::Ok);
        assert_eq!(anatomy_model_free(m), AnatomyStatus::Ok);
    }
}

/// `params.lookup` gives the answer of plain decoding (text, tokens, choice and option
/// probabilities bit for bit) on the demo model's sample question, and `lookup_accepted_tokens`
/// says how many decoded tokens came from checked drafts.
#[test]
fn lookup_gives_the_same_answer_and_counts_the_drafted_tokens_kept() {
    let demo = root().join("demo");
    let lm = cstr(demo.join("anatomy-demo.gguf").to_str().unwrap());
    let mm = cstr(demo.join("anatomy-demo-mmproj.gguf").to_str().unwrap());
    let mut m = null_mut();
    // SAFETY: valid strings, default params (NULL) and out pointer.
    let st = unsafe { anatomy_model_load(lm.as_ptr(), mm.as_ptr(), null(), &mut m) };
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    let frame = std::fs::read(demo.join("samples/images/000003.png")).unwrap();
    let q = cstr("What is the top-left anatomy?");
    let names = "Liver;Gallbladder;Omentum;Abdominal Wall Cavity;Cystic Plate;Gut";
    let opts: Vec<CString> = names.split(';').map(cstr).collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let answer = |lookup: u32| {
        let s = session(m);
        let mut p = anatomy_gen_params_default();
        p.lookup = lookup;
        let mut r = null_mut();
        // SAFETY: all pointers valid for the call.
        let st = unsafe {
            anatomy_ask(
                s,
                &encoded(&frame),
                q.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                &p,
                None,
                null_mut(),
                &mut r,
            )
        };
        assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
        let (mut idx, mut letter) = (-1, 0 as c_char);
        let (mut probs, mut n) = (null(), 0usize);
        let mut t = AnatomyTimings::default();
        // SAFETY: live result, valid out pointers; the probabilities live as long as `r`.
        let probs = unsafe {
            assert_eq!(
                anatomy_result_choice(r, &mut idx, &mut letter),
                AnatomyStatus::Ok
            );
            assert_eq!(
                anatomy_result_option_probs(r, &mut probs, &mut n),
                AnatomyStatus::Ok
            );
            assert_eq!(anatomy_result_timings(r, &mut t), AnatomyStatus::Ok);
            std::slice::from_raw_parts(probs, n).to_vec()
        };
        let out = (text(r), tokens(r), idx, letter, probs, t);
        free_result(r);
        // SAFETY: a live session.
        assert_eq!(unsafe { anatomy_session_free(s) }, AnatomyStatus::Ok);
        out
    };
    let plain = answer(0);
    let drafted = answer(4);
    assert_eq!(plain.0, drafted.0, "text");
    assert_eq!(plain.1, drafted.1, "tokens");
    assert_eq!((plain.2, plain.3), (drafted.2, drafted.3), "choice");
    assert_eq!(plain.4, drafted.4, "option probabilities");
    assert_eq!(plain.4.len(), 6);
    assert_eq!(plain.5.lookup_accepted_tokens, 0);
    let (taken, decoded) = (drafted.5.lookup_accepted_tokens, drafted.5.decode_tokens);
    assert!(taken > 0 && taken <= decoded, "{:?}", drafted.5);
    // SAFETY: a live model.
    assert_eq!(unsafe { anatomy_model_free(m) }, AnatomyStatus::Ok);
}

#[test]
fn options_give_a_choice_and_probabilities() {
    let m = load();
    let s = session(m);
    let png = png();
    let (st, r) = ask(
        s,
        Some(&encoded(&png)),
        &["liver", "kidney", "spleen"],
        8,
        None,
        null_mut(),
    );
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    let (mut idx, mut letter) = (-7, 0 as c_char);
    let (mut p, mut n) = (null(), 0usize);
    // SAFETY: live result, valid out pointers; the probabilities live until the result is freed.
    let probs = unsafe {
        assert_eq!(
            anatomy_result_choice(r, &mut idx, &mut letter),
            AnatomyStatus::Ok
        );
        assert_eq!(
            anatomy_result_choice(r, null_mut(), null_mut()),
            AnatomyStatus::Ok
        );
        assert_eq!(
            anatomy_result_option_probs(r, &mut p, &mut n),
            AnatomyStatus::Ok
        );
        assert_eq!(
            anatomy_result_option_probs(r, null_mut(), &mut n),
            AnatomyStatus::NullPointer
        );
        std::slice::from_raw_parts(p, n).to_vec()
    };
    assert_eq!(probs.len(), 3);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{probs:?}");
    assert!((0..3).contains(&idx));
    assert_eq!(letter as u8, b'A' + idx as u8);
    let best = (0..3).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
    assert_eq!(idx as usize, best);
    free_result(r);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(anatomy_session_free(s), AnatomyStatus::Ok);
        assert_eq!(anatomy_model_free(m), AnatomyStatus::Ok);
    }
}

#[test]
fn callback_stops_panics_and_reentry_is_busy() {
    let m = load();
    let s = session(m);

    extern "C-unwind" fn stop_at_once(_: *const c_char, _: *mut c_void) -> c_int {
        1
    }
    let (st, r) = ask(s, None, &[], 10, Some(stop_at_once), null_mut());
    assert_eq!(st, AnatomyStatus::Ok);
    assert_eq!(finish(r), AnatomyFinishReason::Cancelled);
    assert_eq!(tokens(r).len(), 1);
    free_result(r);

    extern "C-unwind" fn panics(_: *const c_char, _: *mut c_void) -> c_int {
        panic!("callback bug")
    }
    let (st, r) = ask(s, None, &[], 10, Some(panics), null_mut());
    assert_eq!((st, r), (AnatomyStatus::CallbackPanic, null_mut()));
    assert!(last_error().contains("callback bug"), "{}", last_error());

    // A callback asking on its own session: Busy, not a deadlock.
    extern "C-unwind" fn reenter(_: *const c_char, user: *mut c_void) -> c_int {
        // SAFETY: `user` is the `(session, status)` pair below.
        let (s, seen) =
            unsafe { &mut *user.cast::<(*const AnatomySession, Option<AnatomyStatus>)>() };
        let q = c"again";
        let mut r = null_mut();
        // SAFETY: a live session and valid pointers.
        let st = unsafe {
            anatomy_ask(
                *s,
                null(),
                q.as_ptr(),
                null(),
                0,
                null(),
                None,
                null_mut(),
                &mut r,
            )
        };
        *seen = Some(st);
        1
    }
    let mut user: (*const AnatomySession, Option<AnatomyStatus>) = (s, None);
    let (st, r) = ask(
        s,
        None,
        &[],
        4,
        Some(reenter),
        &mut user as *mut _ as *mut c_void,
    );
    assert_eq!(st, AnatomyStatus::Ok);
    assert_eq!(user.1, Some(AnatomyStatus::Busy));
    free_result(r);

    // The session is still usable after all of it.
    let (st, r) = ask(s, None, &[], 3, None, null_mut());
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    assert_eq!(finish(r), AnatomyFinishReason::Length);
    free_result(r);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(anatomy_session_free(s), AnatomyStatus::Ok);
        assert_eq!(anatomy_model_free(m), AnatomyStatus::Ok);
    }
}

#[test]
fn cancel_from_another_thread() {
    let m = load();
    let s = session(m);

    // On the first piece, another thread cancels; the ask stops after at most one more token.
    extern "C-unwind" fn cancel_elsewhere(_: *const c_char, user: *mut c_void) -> c_int {
        // SAFETY: `user` is the session handle's address, live during the ask.
        let addr = unsafe { *user.cast::<usize>() };
        let st = std::thread::spawn(move || {
            // SAFETY: a live session; cancel only touches its atomic flag.
            unsafe { anatomy_session_cancel(addr as *const AnatomySession) }
        })
        .join()
        .unwrap();
        assert_eq!(st, AnatomyStatus::Ok);
        0
    }
    let mut addr = s as usize;
    let (st, r) = ask(
        s,
        None,
        &[],
        12,
        Some(cancel_elsewhere),
        (&mut addr as *mut usize).cast(),
    );
    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
    assert_eq!(finish(r), AnatomyFinishReason::Cancelled);
    assert!(tokens(r).len() <= 2, "{:?}", tokens(r));
    free_result(r);
    // The request was consumed: the next ask runs to its length.
    let (st, r) = ask(s, None, &[], 4, None, null_mut());
    assert_eq!(st, AnatomyStatus::Ok);
    assert_eq!(finish(r), AnatomyFinishReason::Length);
    free_result(r);
    // SAFETY: live handles.
    unsafe {
        assert_eq!(anatomy_session_free(s), AnatomyStatus::Ok);
        assert_eq!(anatomy_model_free(m), AnatomyStatus::Ok);
    }
}

#[test]
fn one_model_many_threads() {
    let m = load();
    let addr = m as usize;
    let png = png();
    let answers: Vec<Vec<u32>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let png = &png;
                sc.spawn(move || {
                    let s = session(addr as *const AnatomyModel);
                    let (st, r) = ask(s, Some(&encoded(png)), &[], 6, None, null_mut());
                    assert_eq!(st, AnatomyStatus::Ok, "{}", last_error());
                    let t = tokens(r);
                    free_result(r);
                    // SAFETY: this thread's live session.
                    assert_eq!(unsafe { anatomy_session_free(s) }, AnatomyStatus::Ok);
                    t
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers[0].len(), 6);
    assert!(answers.iter().all(|a| a == &answers[0]));
    // SAFETY: live model.
    assert_eq!(unsafe { anatomy_model_free(m) }, AnatomyStatus::Ok);
}
