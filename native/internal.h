// Internal state shared by the native modules (not part of the C API).
#pragma once

#include "llama.h"
#include "sirius.h"

#include <array>
#include <memory>
#include <string>
#include <vector>

namespace sirius {
int32_t fail(int32_t code, std::string msg);
struct SparseFFN;  // sparse.cpp
}  // namespace sirius

struct sirius_model {
    llama_model *       model = nullptr;
    const llama_vocab * vocab = nullptr;
    int32_t             n_vocab = 0;
    std::string         path;
};

struct sirius_session {
    sirius_model *           model = nullptr;
    llama_context *          ctx = nullptr;
    llama_batch              batch{};
    uint32_t                 n_ctx = 0;    // the limit the caller asked for (llama.cpp pads its own up)
    uint32_t                 n_batch = 0;
    std::vector<llama_token> tokens;       // exactly the tokens whose KV is in the cache, positions 0..n-1
    int32_t                  n_dense = 0;  // leading tokens whose KV came from the dense model (reusable)
    bool                     sparse_on = false;

    // Griffin statistic, accumulated from the FFN activations of dense batches while collecting:
    // per layer and neuron, the sum over tokens of (z_ti / ||z_t||)^2 with z = act(gate x) * (up x).
    bool                            collect = false;
    std::vector<std::vector<double>> griffin_sumsq;
    int32_t                         griffin_tokens = 0;
    std::vector<float>              scratch;

    std::unique_ptr<sirius::SparseFFN> sparse;  // compact FFN of the current prompt, if built
    sirius_session();   // both out of line: SparseFFN is complete only in sparse.cpp
    ~sirius_session();
};

namespace sirius {
// sparse.cpp
bool    eval_callback(struct ggml_tensor * t, bool ask, void * user_data);
int32_t sparse_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info);
void    sparse_release(sirius_session * s);
int32_t set_ffn_mode(sirius_session * s, int32_t mode);
}  // namespace sirius
