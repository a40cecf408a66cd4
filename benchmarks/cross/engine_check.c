/* A build's engine, checked through the C API alone (no Python): for cross builds run under emulation
 * (benchmarks/cross/aarch64_check.sh) and the same check on the host build, to compare.
 *
 *   engine_check MODEL.gguf [N_TOKENS]
 *
 * Prints one line per run: dense greedy, then Griffin and top-k sparse decoding, then strict Sirius with each
 * (K 4), as "name: ids...". Exits 1 if strict Sirius differs from dense greedy (it must reproduce it token for
 * token on any backend), 2 on an engine error. */
#include "sirius.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char * what) {
    fprintf(stderr, "engine_check: %s: %s\n", what, sirius_last_error());
    return 2;
}

typedef struct { int32_t ids[512]; int32_t n; } Tokens;

static int on_tokens(void * user, const int32_t * tokens, int32_t n, const char * text, int32_t len) {
    Tokens * t = (Tokens *) user;
    (void) text; (void) len;
    for (int32_t i = 0; i < n && t->n < 512; ++i) t->ids[t->n++] = tokens[i];
    return 0;
}

static int run(sirius_session * s, const int32_t * prompt, int32_t n_prompt, int32_t n_tokens, int32_t mode,
               int32_t sparsity, const char * name, Tokens * out) {
    sirius_generate_params p;
    memset(&p, 0, sizeof(p));
    p.max_tokens = n_tokens;
    p.sampling.top_p = 1.0f;  /* greedy: temperature 0, every filter off */
    p.ignore_eos = 1;
    p.mode = mode;
    p.sparsity = sparsity;
    p.density = 0.5f;
    p.sirius.period = 4;
    p.sirius.max_period = 16;
    p.sirius.acceptance = SIRIUS_ACCEPT_STRICT;
    p.sirius.threshold = 0.1f;
    p.sirius.accept_temperature = 0.6f;
    p.sirius.width = 1;
    sirius_generate_result r;
    out->n = 0;
    if (sirius_session_reset(s) != SIRIUS_OK) return fail("reset");
    if (sirius_generate(s, prompt, n_prompt, &p, on_tokens, out, &r) != SIRIUS_OK) return fail(name);
    printf("%s:", name);
    for (int32_t i = 0; i < out->n; ++i) printf(" %d", out->ids[i]);
    printf("\n");
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: engine_check MODEL.gguf [N_TOKENS]\n");
        return 2;
    }
    const int32_t n_tokens = argc > 2 ? atoi(argv[2]) : 24;
    printf("system: %s\n", sirius_system_info());
    sirius_model * m = NULL;
    if (sirius_model_load(argv[1], 0, &m) != SIRIUS_OK) return fail("load");
    sirius_model_set_cache_dir(m, NULL);  /* the neuron-major down in memory: nothing written */
    sirius_session * s = NULL;
    if (sirius_session_new(m, 512, 2, 2, 512, &s) != SIRIUS_OK) return fail("session");
    const char * text = "The quick brown fox jumps over the lazy dog. Once upon a time";
    int32_t prompt[128], n_prompt = 0;
    if (sirius_tokenize(m, text, (int32_t) strlen(text), 1, 0, prompt, 128, &n_prompt) != SIRIUS_OK) return fail("tokenize");
    Tokens dense, t;
    int rc = run(s, prompt, n_prompt, n_tokens, SIRIUS_MODE_DENSE, 0, "dense", &dense);
    if (rc) return rc;
    const int32_t sparsities[2] = {SIRIUS_SPARSITY_GRIFFIN, SIRIUS_SPARSITY_TOPK};
    const char * names[2] = {"griffin", "topk"};
    int differs = 0;
    for (int i = 0; i < 2; ++i) {
        char name[64];
        snprintf(name, sizeof(name), "sparse %s 0.5", names[i]);
        if ((rc = run(s, prompt, n_prompt, n_tokens, SIRIUS_MODE_SPARSE, sparsities[i], name, &t))) return rc;
        snprintf(name, sizeof(name), "strict sirius %s K4", names[i]);
        if ((rc = run(s, prompt, n_prompt, n_tokens, SIRIUS_MODE_SIRIUS, sparsities[i], name, &t))) return rc;
        if (t.n != dense.n || memcmp(t.ids, dense.ids, sizeof(int32_t) * (size_t) t.n) != 0) {
            fprintf(stderr, "engine_check: strict Sirius with %s differs from dense greedy\n", names[i]);
            differs = 1;
        }
    }
    sirius_session_free(s);
    sirius_model_free(m);
    return differs;
}
