//! The cost of the C path over the Rust API: the same question (image cached by the session, 8
//! greedy tokens, streaming callback) through `Session::ask` and through `anatomy_ask` plus the
//! result getters and free, on the committed demo model and one of its sample frames.
//! `cargo bench -p anatomy-capi --bench c_overhead`

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::ptr::null_mut;

use anatomy::*;
use anatomy_runtime::generate::{AskRequest, Flow, ImageInput};
use anatomy_runtime::{Model, ModelOptions, SamplingParams};
use criterion::{criterion_group, criterion_main, Criterion};

const TOKENS: u32 = 8;
const QUESTION: &str = "What is the top-left anatomy?";

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo = root.join("demo");
    let (lm, mm) = (
        demo.join("anatomy-demo.gguf"),
        demo.join("anatomy-demo-mmproj.gguf"),
    );
    let png = std::fs::read(demo.join("samples/images/000003.png")).unwrap();
    let (rgb, w, h) = anatomy_models::qwen2_5_vl::preprocess::decode_image(
        &png,
        &anatomy_models::qwen2_5_vl::preprocess::DecodeLimits::default(),
    )
    .unwrap();

    // Rust API.
    let opts = ModelOptions {
        threads: Some(1),
        ..Default::default()
    };
    let model = Model::load(&lm, Some(&mm), &opts).unwrap();
    let mut session = model.session();
    let req = AskRequest {
        question: QUESTION.into(),
        image: Some(ImageInput::Rgb8 {
            data: rgb.clone(),
            width: w,
            height: h,
        }),
        options: Vec::new(),
        max_tokens: TOKENS as usize,
        lookup: 0,
        sampling: SamplingParams::default(),
    };
    c.bench_function("rust_api_ask", |b| {
        b.iter(|| {
            session.reset();
            let mut n = 0usize;
            let a = session
                .ask(&req, &mut |p| {
                    n += p.len();
                    Flow::Continue
                })
                .unwrap();
            assert_eq!(a.token_ids.len(), TOKENS as usize);
            n
        })
    });

    // C ABI.
    let (lm, mm) = (
        CString::new(lm.to_str().unwrap()).unwrap(),
        CString::new(mm.to_str().unwrap()).unwrap(),
    );
    let mut mp = anatomy_model_params_default();
    mp.threads = 1;
    let q = CString::new(QUESTION).unwrap();
    let mut gp = anatomy_gen_params_default();
    gp.max_tokens = TOKENS;
    let img = AnatomyImage {
        format: AnatomyImageFormat::Rgb8 as u32,
        data: rgb.as_ptr(),
        len: rgb.len(),
        width: w,
        height: h,
        stride: w * 3,
    };
    extern "C-unwind" fn count(piece: *const c_char, user: *mut c_void) -> c_int {
        // SAFETY: `user` is the counter below; `piece` is NUL-terminated.
        unsafe { *user.cast::<usize>() += std::ffi::CStr::from_ptr(piece).to_bytes().len() };
        0
    }
    let (mut m, mut s) = (null_mut(), null_mut());
    // SAFETY: valid arguments; handles are freed below.
    unsafe {
        assert_eq!(
            anatomy_model_load(lm.as_ptr(), mm.as_ptr(), &mp, &mut m),
            AnatomyStatus::Ok
        );
        assert_eq!(anatomy_session_new(m, &mut s), AnatomyStatus::Ok);
    }
    c.bench_function("c_abi_ask", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let mut r = null_mut();
            let mut text = std::ptr::null();
            // SAFETY: live handles and valid pointers.
            unsafe {
                assert_eq!(anatomy_session_reset(s), AnatomyStatus::Ok);
                let st = anatomy_ask(
                    s,
                    &img,
                    q.as_ptr(),
                    std::ptr::null(),
                    0,
                    &gp,
                    Some(count),
                    (&mut n as *mut usize).cast(),
                    &mut r,
                );
                assert_eq!(st, AnatomyStatus::Ok);
                assert_eq!(anatomy_result_text(r, &mut text), AnatomyStatus::Ok);
                assert_eq!(anatomy_result_free(r), AnatomyStatus::Ok);
            }
            n
        })
    });
    // SAFETY: live handles, freed once.
    unsafe {
        anatomy_session_free(s);
        anatomy_model_free(m);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
