// The sparse FFN's state, shared by its builders (sparse.cpp), the per-token kernels (neuron_ffn.cpp) and the
// neuron-major layout (neuron_down.cpp).
#pragma once

#include "internal.h"

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <initializer_list>
#include <vector>

namespace sirius {

struct CompactTensor {
    ggml_context *        ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor *         t = nullptr;
    ggml_backend_buffer_type_t asked = nullptr;  // the buffer type it was asked for (it may have fallen back)
};

// The GGUF file mapped read-only: tensor bytes in their file layout, sharing the page cache that llama.cpp's
// own mapping already filled.
struct MappedGGUF {
    gguf_context *  g = nullptr;
    const uint8_t * base = nullptr;
    size_t          size = 0;
    size_t          data_offset = 0;

    // populate: fault every page in at once (one pass of the kernel instead of a fault per 4 KiB on first use).
    bool open(const std::string & path, bool populate = false) {
        gguf_init_params gp = {true, nullptr};
        g = gguf_init_from_file(path.c_str(), gp);
        if (!g) return false;
        data_offset = gguf_get_data_offset(g);
        int fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) return false;
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_size > 0) {
            void * p = mmap(nullptr, (size_t) st.st_size, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
            if (p != MAP_FAILED) {
                base = static_cast<const uint8_t *>(p);
                size = (size_t) st.st_size;
            }
        }
        ::close(fd);
        return base != nullptr;
    }
    // The bytes of a tensor, or nullptr if it is absent or outside the file.
    const uint8_t * tensor(const char * name, size_t expect) const {
        int64_t id = gguf_find_tensor(g, name);
        if (id < 0 || gguf_get_tensor_size(g, id) != expect) return nullptr;
        size_t off = data_offset + gguf_get_tensor_offset(g, id);
        return off + expect <= size ? base + off : nullptr;
    }
    ~MappedGGUF() {
        if (base) munmap(const_cast<uint8_t *>(base), size);
        if (g) gguf_free(g);
    }
};

// Per-token selection on single neurons, one per layer that runs on them: what the CPU kernels read at compute
// time (neuron_ffn.cpp).
struct NeuronLayer {
    sirius_session * s = nullptr;      // (null in the kernel check graph)
    int32_t          il = 0;
    ggml_tensor *    up = nullptr;     // the GGUF's ffn_up [n_embd, n_ff], read in place from the mapped file
    ggml_tensor *    down = nullptr;   // the neuron-major ffn_down [n_embd, n_ff] (row n: neuron n's column)
    int64_t          k = 0;            // top-k: neurons kept per token; 0: threshold
    int64_t          run = 1;          // top-k: neurons chosen together, a run of consecutive ones (n_ff % run == 0)
    float            threshold = 0.0f; // threshold: a neuron is computed when |act(gate x)| >= threshold
    std::atomic<int64_t> kept{0}, seen{0};  // neurons computed / considered, over all decodes
};

// The alignment ggml_backend_cpu_buffer_from_ptr asserts for the memory it wraps (ggml's TENSOR_ALIGNMENT), and
// where the neuron-major rows start in memory (a cache line, a multiple of it).
constexpr size_t kTensorAlign = 32;
constexpr size_t kRowAlign = 64;
static_assert(kRowAlign % kTensorAlign == 0, "neuron-major rows must satisfy ggml's alignment");

// The neuron-major copy of every layer's ffn_down (neuron_down.cpp), one per model.
struct NeuronDown {
    ggml_type                         type = GGML_TYPE_COUNT;
    std::vector<const uint8_t *>      rows;   // per layer: n_ff rows of n_embd (nullptr: the layer has none)
    std::unique_ptr<MappedGGUF>       file;   // the cached file they are in, or
    std::vector<std::vector<uint8_t>> owned;  // the memory they are in (no cache directory, or not writable)
    std::string                       path;   // the cached file ("" when in memory)
    int64_t                           bytes = 0;
    double                            build_ms = 0.0;  // 0: loaded from the cache
};

// One layer's entry in patch 0001's FFN table (llama_sirius_set_ffn): the model's own up, gate and down, which
// identify the layer's FFN, and the tensors a sparse single-token decode uses instead. All null: the layer stays
// dense. By method:
//   Griffin:                  the compact copies of the kept neurons' rows (up, gate) and columns (down);
//   top-k / threshold groups: [n_embd, G, n_groups] views of up and down for patch 0002's mul_mat_id, the gate;
//   top-k / threshold single neurons: the model's own three; the FFN builder (neuron_ffn.cpp) computes the layer
//                             (were it ever to decline, patch 0001 would run these: the dense FFN).
struct FFNOverride {
    ggml_tensor * up = nullptr, * gate = nullptr, * down = nullptr;
    ggml_tensor * sparse_up = nullptr, * sparse_gate = nullptr, * sparse_down = nullptr;
};

struct SparseFFN {
    int32_t                           sparsity = SIRIUS_SPARSITY_GRIFFIN;
    std::vector<CompactTensor>        owned;
    // Top-k and threshold: layers on the CPU run on single neurons (neurons[il]); others (a GPU's) keep whole
    // groups of G through patch 0002's mul_mat_id graph (topk_blocks[il] groups per token).
    std::vector<int32_t>              topk_blocks;  // per layer: groups kept per token (0: not a group layer)
    std::vector<std::unique_ptr<NeuronLayer>> neurons;  // per layer (null: not a single-neuron layer)
    std::shared_ptr<const MappedGGUF> file;         // the model file: up is read in place from it
    std::shared_ptr<const NeuronDown> down_nm;      // the model's neuron-major down
    std::vector<CompactTensor>        views;        // buffers over those mappings and the tensors in them
    bool                              all_groups = false;  // SIRIUS_PER_TOKEN_GROUPS=1: every layer on groups
    std::vector<FFNOverride>          table;   // per layer, for llama_sirius_set_ffn (set_ffn_table)
    std::vector<std::vector<int32_t>> groups;  // per layer; empty = dense layer
    std::vector<int32_t>              group_size;
    sirius_sparse_info                info{};

    explicit SparseFFN(int32_t n_layer)
        : topk_blocks(n_layer, 0), neurons(n_layer), table(n_layer), groups(n_layer), group_size(n_layer, 0) {
        info.n_layers = n_layer;
        info.down_type = -1;
    }
    ~SparseFFN();
};

// The trimmed draft head of the current prompt (draft_head.cpp).
struct DraftHead {
    CompactTensor        t;
    std::vector<int32_t> ids;   // the subset, ascending: row q of t is token ids[q]
    std::vector<float>   full;  // n_vocab; -inf outside the subset, which is rewritten on every trimmed row
    ~DraftHead() {
        if (t.buf) ggml_backend_buffer_free(t.buf);
        if (t.ctx) ggml_free(t.ctx);
    }
};

// Allocates one tensor of `type`, shape ne0 x ne1 x ne2, in buft (the plain CPU type where buft is a CPU extra
// type that cannot take the shape) (sparse.cpp).
int32_t alloc_tensor(ggml_backend_buffer_type_t buft, ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2,
                     CompactTensor & out);
// Where a compact copy of `like` goes: like's buffer type, but plain host memory for mapped or repacked weights.
ggml_backend_buffer_type_t like_buft(const ggml_tensor * like);
// Whether buft is the CPU extra type sparse tensors may live in (ggml-cpu's repacking).
bool sparse_extra(ggml_backend_buffer_type_t buft);
// The builders by method, for sparse_build: griffin.cpp and per_token.cpp.
int32_t griffin_build(sirius_session * s, float density, sirius_sparse_info * info);
int32_t per_token_build(sirius_session * s, int32_t sparsity, float density, sirius_sparse_info * info);

// Hands the session's table (s->sparse->table) to llama.cpp (patch 0001), or clears it when there is none.
void set_ffn_table(sirius_session * s);

// The layer of a graph node named PREFIX-IL (llama.cpp's cb names, e.g. "ffn_swiglu-3"), -1 if none matches.
int node_layer(const char * name, std::initializer_list<const char *> prefixes);

// A tensor of `type`, shape ne0 x ne1, where a compact copy of `like` goes (sparse.cpp: like's buffer type, but
// plain host memory for mmapped or CPU-repacked weights).
int32_t alloc_like(const ggml_tensor * like, ggml_type type, int64_t ne0, int64_t ne1, CompactTensor & out);
// Adds c's buffer to info.bytes, and to info.device_bytes where it is not host memory.
void count_bytes(const CompactTensor & c, sirius_sparse_info & info);

// A layer's gated FFN as the sparse paths see it: the model's tensors, their GGUF names, and the group size
// G = ffn_down's quant block (at least 32 neurons), so a group is whole rows of gate/up and whole blocks of down.
struct LayerFFN {
    char          name[3][96];  // up, gate, down
    ggml_tensor * up = nullptr, * gate = nullptr, * down = nullptr;
    int64_t       n_embd = 0, n_ff = 0, G = 0;
};
bool layer_ffn(const llama_model * model, int32_t il, LayerFFN & f);

// Weight bytes one dense decode step reads (sparse.cpp).
int64_t dense_step_bytes(const MappedGGUF & file);

// The model's GGUF mapped once (populated) and kept for its lifetime; nullptr if it cannot be mapped.
std::shared_ptr<const MappedGGUF> model_file(sirius_model * m);

// neuron_ffn.cpp: installs (or removes) the llama_sirius_ffn_builder that single-neuron decodes and score
// recording need, after any change of either.
void neuron_ffn_sync(sirius_session * s);
// The kernels' nodes for one layer: y [n_embd] from a = act(gate x) [n_ff] and x [n_embd]; NULL if L->down's
// type has no kernel or n_embd is not a multiple of 32.
ggml_tensor * neuron_ffn_nodes(ggml_context * ctx, ggml_tensor * a, ggml_tensor * x, NeuronLayer * L);
// After computing them: how many neurons those nodes kept, and *ids their ids (ascending).
int32_t neuron_nodes_kept(const ggml_tensor * y, const int32_t ** ids);
// Exact top-k of |a| over n values (ties to the lower index), ascending.
void select_topk(const float * a, int64_t n, int64_t k, std::vector<int32_t> & out, std::vector<uint32_t> & keys);

// neuron_down.cpp: the model's neuron-major down into out, loaded from its cache or built (on n_threads threads).
int32_t neuron_down(sirius_model * m, int32_t n_threads, std::shared_ptr<const NeuronDown> & out);
ggml_type neuron_down_type(ggml_type src, const char ** why);
// sparse.cpp: the type a requantised copy of ffn_down gets by default (Griffin's compact down, the neuron-major
// down): float weights stay float, 8-bit ones Q8_0, lower ones Q4_0.
ggml_type requantised_down_type(ggml_type src);

}  // namespace sirius
