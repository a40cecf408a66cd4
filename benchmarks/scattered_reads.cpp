// Read bandwidth of the per-token kernels' access pattern, without their arithmetic: 28 layers x 8960 rows of
// 864 bytes (Qwen2.5-Coder-1.5B's ffn_up at Q4_K, or its neuron-major ffn_down at Q4_0), a random `density` of
// each layer's rows per "token" (new sets each token), read by `threads` threads; prints ms per token and the
// useful GB/s (bytes of kept rows only). NOTES, "Prefetching into L2".
//
//   g++ -O2 -mavx2 -pthread benchmarks/scattered_reads.cpp -o /tmp/scattered_reads
//   /tmp/scattered_reads THREADS ORDER SPLIT AHEAD HINT DENSITY
//     ORDER: asc (kept rows in ascending order, as the kernels take them) | shuffled
//     SPLIT: rows (each thread its slice of the kept rows, whole rows) | cols (each thread its share of every row)
//     AHEAD: rows prefetched ahead (0: none); HINT: t0 (into L1) | t1 (into L2) | t2
//   e.g. /tmp/scattered_reads 2 asc rows 16 t1 0.5
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

constexpr int kLayers = 28, kRows = 8960, kRowBytes = 864, kTokens = 20;

struct Barrier {
    std::atomic<int> count{0}, gen{0};
    int n = 1;
    void wait() {
        const int g = gen.load();
        if (count.fetch_add(1) + 1 == n) {
            count = 0;
            gen.fetch_add(1);
        } else {
            while (gen.load() == g) _mm_pause();
        }
    }
};

template <_mm_hint Hint> void prefetch(const uint8_t * p, int len) {
    for (int o = 0; o < len; o += 64) _mm_prefetch(reinterpret_cast<const char *>(p + o), Hint);
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s THREADS asc|shuffled rows|cols AHEAD t0|t1|t2 DENSITY\n", argv[0]);
        return 2;
    }
    const int nth = atoi(argv[1]), ahead = atoi(argv[4]);
    const bool shuffled = strcmp(argv[2], "shuffled") == 0, cols = strcmp(argv[3], "cols") == 0;
    const int hint = argv[5][1] - '0';
    const double density = atof(argv[6]);
    if (nth < 1 || ahead < 0 || hint < 0 || hint > 2 || !(density > 0.0 && density <= 1.0)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    const size_t bytes = (size_t) kLayers * kRows * kRowBytes;
    std::vector<uint8_t> buf(bytes);
    for (size_t i = 0; i < bytes; i += 64) buf[i] = (uint8_t) i;
    std::mt19937 rng(1);
    const int k = std::max(1, (int) (density * kRows));
    std::vector<std::vector<int>> kept((size_t) kTokens * kLayers);
    for (auto & ids : kept) {
        ids.resize(kRows);
        for (int i = 0; i < kRows; ++i) ids[i] = i;
        std::shuffle(ids.begin(), ids.end(), rng);
        ids.resize(k);
        if (!shuffled) std::sort(ids.begin(), ids.end());
    }
    Barrier bar;
    bar.n = nth;
    std::vector<long long> sink(nth * 8);
    auto work = [&](int ith) {
        __m256i acc = _mm256_setzero_si256();
        for (int t = 0; t < kTokens; ++t) {
            for (int l = 0; l < kLayers; ++l) {
                const uint8_t * base = buf.data() + (size_t) l * kRows * kRowBytes;
                const std::vector<int> & ids = kept[(size_t) t * kLayers + l];
                const int n = (int) ids.size();
                const int j0 = cols ? 0 : n * ith / nth, j1 = cols ? n : n * (ith + 1) / nth;
                const int off = cols ? kRowBytes * ith / nth / 32 * 32 : 0;
                const int end = cols ? (ith == nth - 1 ? kRowBytes : kRowBytes * (ith + 1) / nth / 32 * 32) : kRowBytes;
                for (int j = j0; j < j1; ++j) {
                    if (ahead && j + ahead < j1) {
                        const uint8_t * p = base + (size_t) ids[j + ahead] * kRowBytes + off;
                        if (hint == 0) prefetch<_MM_HINT_T0>(p, end - off);
                        else if (hint == 1) prefetch<_MM_HINT_T1>(p, end - off);
                        else prefetch<_MM_HINT_T2>(p, end - off);
                    }
                    const uint8_t * row = base + (size_t) ids[j] * kRowBytes;
                    for (int o = off; o + 32 <= end; o += 32) {
                        acc = _mm256_xor_si256(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(row + o)));
                    }
                }
                bar.wait();
            }
        }
        sink[ith * 8] = _mm256_extract_epi64(acc, 0);
    };
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int i = 1; i < nth; ++i) threads.emplace_back(work, i);
    work(0);
    for (auto & th : threads) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double useful = (double) kTokens * kLayers * k * kRowBytes;
    printf("threads %d %s %s ahead %d t%d density %.2f: %.2f ms/token, %.1f GB/s useful (checksum %lld)\n", nth, argv[2],
           argv[3], ahead, hint, density, s / kTokens * 1e3, useful / s / 1e9, sink[0]);
    return 0;
}
