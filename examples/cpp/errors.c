/* Every bad-input case of the C ABI from C: each must give its status code and a message, never a
 * crash. Run under valgrind by `make -C examples/cpp valgrind`. Exits non-zero on any mismatch. */
#include <anatomy.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

static void expect(AnatomyStatus got, AnatomyStatus want, const char *what) {
    if (got != want) {
        fprintf(stderr, "FAIL %s: status %d, want %d (%s)\n", what, (int)got, (int)want, anatomy_last_error());
        failures++;
    } else if (want != ANATOMY_STATUS_OK && anatomy_last_error()[0] == '\0') {
        fprintf(stderr, "FAIL %s: no error message\n", what);
        failures++;
    }
}

static int stop_now(const char *piece, void *user) {
    (void)piece;
    (void)user;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s LM.gguf MMPROJ.gguf FRAME.png\n", argv[0]);
        return 2;
    }
    /* A frame of the kind the model was trained on, so that it writes text the callback can stop:
     * on a flat grey frame and a one-letter question a small model may end its turn at once. */
    static unsigned char frame[1 << 20];
    size_t frame_len = 0;
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[3]);
        return 2;
    }
    frame_len = fread(frame, 1, sizeof frame, f);
    fclose(f);
    AnatomyModel *model = NULL;
    AnatomySession *session = NULL;
    AnatomyResult *result = NULL;
    const char bad_utf8[] = {'a', (char)0xff, 0};
    AnatomyModelParams mp = anatomy_model_params_default();
    AnatomyGenParams gp = anatomy_gen_params_default();

    expect(anatomy_model_load(NULL, NULL, NULL, &model), ANATOMY_STATUS_NULL_POINTER, "load NULL path");
    expect(anatomy_model_load(argv[1], argv[2], NULL, NULL), ANATOMY_STATUS_NULL_POINTER, "load NULL out");
    expect(anatomy_model_load(bad_utf8, NULL, NULL, &model), ANATOMY_STATUS_INVALID_UTF8, "load bad UTF-8");
    expect(anatomy_model_load("/nonexistent.gguf", NULL, NULL, &model), ANATOMY_STATUS_LOAD, "load missing");
    mp.backend = "quantum";
    expect(anatomy_model_load(argv[1], argv[2], &mp, &model), ANATOMY_STATUS_INVALID_ARGUMENT, "load backend");
    mp.backend = NULL;
    mp.threads = 1;
    expect(anatomy_model_load(argv[1], argv[2], &mp, &model), ANATOMY_STATUS_OK, "load");
    if (!model) return 1;

    expect(anatomy_session_new(NULL, &session), ANATOMY_STATUS_INVALID_HANDLE, "session NULL model");
    expect(anatomy_session_new(model, NULL), ANATOMY_STATUS_NULL_POINTER, "session NULL out");
    expect(anatomy_session_new(model, &session), ANATOMY_STATUS_OK, "session");

    gp.max_tokens = 2;
    expect(anatomy_ask(session, NULL, NULL, NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_NULL_POINTER,
           "ask NULL question");
    expect(anatomy_ask(session, NULL, bad_utf8, NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_INVALID_UTF8,
           "ask bad UTF-8");
    expect(anatomy_ask(session, NULL, "q", NULL, 3, &gp, NULL, NULL, &result), ANATOMY_STATUS_NULL_POINTER,
           "ask NULL options");
    const char *opts[] = {"liver", bad_utf8};
    expect(anatomy_ask(session, NULL, "q", opts, 2, &gp, NULL, NULL, &result), ANATOMY_STATUS_INVALID_UTF8,
           "ask bad option");
    AnatomyGenParams zero = gp;
    zero.max_tokens = 0;
    expect(anatomy_ask(session, NULL, "q", NULL, 0, &zero, NULL, NULL, &result), ANATOMY_STATUS_INVALID_ARGUMENT,
           "ask zero tokens");
    uint8_t px[12 * 10 * 3];
    memset(px, 128, sizeof px);
    AnatomyImage img = {ANATOMY_IMAGE_FORMAT_RGB8, px, sizeof px, 12, 10, 36};
    img.width = 0;
    expect(anatomy_ask(session, &img, "q", NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_INVALID_ARGUMENT,
           "ask zero width");
    img.width = 12;
    img.stride = 35;
    expect(anatomy_ask(session, &img, "q", NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_INVALID_ARGUMENT,
           "ask small stride");
    img.stride = 36;
    img.len = 0;
    expect(anatomy_ask(session, &img, "q", NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_INVALID_ARGUMENT,
           "ask zero length");
    img.len = sizeof px;
    img.data = NULL;
    expect(anatomy_ask(session, &img, "q", NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_NULL_POINTER,
           "ask NULL pixels");
    AnatomyImage garbage = {ANATOMY_IMAGE_FORMAT_ENCODED, px, sizeof px, 0, 0, 0};
    expect(anatomy_ask(session, &garbage, "q", NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_IMAGE,
           "ask undecodable image");
    img.data = px;
    expect(anatomy_ask(session, &img, "q", NULL, 0, &gp, NULL, NULL, &result), ANATOMY_STATUS_OK, "ask rgb8");
    expect(anatomy_result_free(result), ANATOMY_STATUS_OK, "rgb8 result free");
    AnatomyImage png = {ANATOMY_IMAGE_FORMAT_ENCODED, frame, frame_len, 0, 0, 0};
    const char *options[] = {"Liver", "Gallbladder", "Omentum", "Abdominal Wall Cavity", "Cystic Plate", "Gut"};
    expect(anatomy_ask(session, &png, "What anatomy is at the center of the frame ?", options, 6, &gp, stop_now,
                       NULL, &result),
           ANATOMY_STATUS_OK, "ask encoded frame");
    AnatomyFinishReason reason = ANATOMY_FINISH_REASON_STOP;
    expect(anatomy_result_finish_reason(result, &reason), ANATOMY_STATUS_OK, "finish reason");
    if (reason != ANATOMY_FINISH_REASON_CANCELLED) {
        fprintf(stderr, "FAIL: callback stop gave finish reason %d\n", (int)reason);
        failures++;
    }
    expect(anatomy_result_text(result, NULL), ANATOMY_STATUS_NULL_POINTER, "text NULL out");
    expect(anatomy_result_free(result), ANATOMY_STATUS_OK, "result free");
    expect(anatomy_result_free(result), ANATOMY_STATUS_INVALID_HANDLE, "result double free");
    expect(anatomy_session_cancel((const AnatomySession *)model), ANATOMY_STATUS_INVALID_HANDLE, "wrong kind");
    expect(anatomy_session_free(session), ANATOMY_STATUS_OK, "session free");
    expect(anatomy_session_free(session), ANATOMY_STATUS_INVALID_HANDLE, "session double free");
    expect(anatomy_model_free(model), ANATOMY_STATUS_OK, "model free");
    expect(anatomy_model_free(model), ANATOMY_STATUS_INVALID_HANDLE, "model double free");
    if (failures) {
        fprintf(stderr, "%d FAILED\n", failures);
        return 1;
    }
    printf("error paths OK\n");
    return 0;
}
