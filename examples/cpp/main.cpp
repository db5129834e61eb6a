// Loads the model once, asks about one image from two threads at once (a session each), streams
// the tokens and prints the answers. Exits non-zero if any call failed.
//
//   make -C examples/cpp run            (builds libanatomy with cargo, then this program)
//   ./ask_threads LM.gguf MMPROJ.gguf IMAGE.png QUESTION [OPTION ...]
//
// One thread asks the question as free text, the other with the options (when given).

#include <anatomy.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

std::mutex print_mutex;

struct Stream {
    int thread;
    std::string text;
    int pieces = 0;
};

// Token callback: C ABI, must not throw.
int on_piece(const char* piece, void* user) noexcept {
    auto* s = static_cast<Stream*>(user);
    try {
        s->text += piece;
        s->pieces++;
        std::lock_guard<std::mutex> lock(print_mutex);
        std::printf("[thread %d] +%s\n", s->thread, piece);
    } catch (...) {
        return 1;  // stop generating rather than let an exception cross the C boundary
    }
    return 0;
}

bool check(AnatomyStatus st, const char* what) {
    if (st == ANATOMY_STATUS_OK) return true;
    std::lock_guard<std::mutex> lock(print_mutex);
    std::fprintf(stderr, "%s failed (status %d): %s\n", what, static_cast<int>(st), anatomy_last_error());
    return false;
}

bool ask(const AnatomyModel* model, int thread, const std::vector<unsigned char>& png,
         const char* question, const std::vector<const char*>& options) {
    AnatomySession* session = nullptr;
    if (!check(anatomy_session_new(model, &session), "anatomy_session_new")) return false;
    AnatomyImage image{};
    image.format = ANATOMY_IMAGE_FORMAT_ENCODED;
    image.data = png.data();
    image.len = png.size();
    AnatomyGenParams params = anatomy_gen_params_default();
    // The demo model describes the frame in about 55 tokens before it answers.
    params.max_tokens = 96;
    // `params.lookup` (prompt-lookup decoding, same answers) pays where decoding is memory-bound,
    // as with a real checkpoint; on this tiny model the drafts only add work, so it stays 0.
    Stream stream{thread, {}, 0};
    AnatomyResult* result = nullptr;
    bool ok = check(anatomy_ask(session, &image, question,
                                options.empty() ? nullptr : options.data(), options.size(), &params,
                                on_piece, &stream, &result),
                    "anatomy_ask");
    if (ok) {
        const char* text = nullptr;
        AnatomyTimings t{};
        int32_t choice = -1;
        char letter = 0;
        const float* probs = nullptr;
        size_t n = 0;
        ok = check(anatomy_result_text(result, &text), "anatomy_result_text") &&
             check(anatomy_result_timings(result, &t), "anatomy_result_timings") &&
             check(anatomy_result_choice(result, &choice, &letter), "anatomy_result_choice") &&
             check(anatomy_result_option_probs(result, &probs, &n), "anatomy_result_option_probs");
        if (ok && stream.text != text) {
            std::fprintf(stderr, "thread %d: streamed text differs from the result\n", thread);
            ok = false;
        }
        if (ok && options.size() != n) {
            std::fprintf(stderr, "thread %d: %zu probabilities for %zu options\n", thread, n, options.size());
            ok = false;
        }
        if (ok) {
            std::lock_guard<std::mutex> lock(print_mutex);
            std::printf("[thread %d] answer (%d pieces, prefill %.1f ms, decode %.1f ms): %s\n", thread,
                        stream.pieces, t.prefill_ms, t.decode_ms, text);
            if (choice >= 0) {
                std::printf("[thread %d] choice %c:", thread, letter);
                for (size_t i = 0; i < n; i++) std::printf(" %c=%.3f", static_cast<char>('A' + i), probs[i]);
                std::printf("\n");
            }
        }
    }
    ok = check(anatomy_result_free(result), "anatomy_result_free") && ok;
    ok = check(anatomy_session_free(session), "anatomy_session_free") && ok;
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s LM.gguf MMPROJ.gguf IMAGE QUESTION [OPTION ...]\n", argv[0]);
        return 2;
    }
    std::printf("libanatomy %s (ABI %u)\n", anatomy_version(), anatomy_abi_version());
    std::ifstream f(argv[3], std::ios::binary);
    std::vector<unsigned char> png((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (png.empty()) {
        std::fprintf(stderr, "cannot read %s\n", argv[3]);
        return 1;
    }
    const char* question = argv[4];
    std::vector<const char*> options(argv + 5, argv + argc);
    AnatomyModelParams mp = anatomy_model_params_default();
    mp.threads = 2;
    AnatomyModel* model = nullptr;
    if (!check(anatomy_model_load(argv[1], argv[2], &mp, &model), "anatomy_model_load")) return 1;

    bool ok[2] = {false, false};
    std::thread a([&] { ok[0] = ask(model, 1, png, question, {}); });
    std::thread b([&] { ok[1] = ask(model, 2, png, question, options); });
    a.join();
    b.join();
    bool freed = check(anatomy_model_free(model), "anatomy_model_free");
    if (!(ok[0] && ok[1] && freed)) {
        std::fprintf(stderr, "FAILED\n");
        return 1;
    }
    std::printf("OK\n");
    return 0;
}
