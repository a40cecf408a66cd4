// The process's CPUs as a budget that sessions' decodes draw on: one llama_decode takes its session's thread
// count (at most the CPUs) and gives it back when it returns. Sessions whose threads fit together run at once;
// past that they take turns, first come first served. ggml's threadpool workers spin at their barriers, so two
// 2-thread sessions computing at once on 2 CPUs stall each other (one spins while the peer it waits for is
// descheduled), and idle workers poll for the next graph for milliseconds (ggml's default poll level, which a
// single session needs for its speed): measured 2-5x slower in aggregate than one session alone
// (benchmarks/NOTES.md, "The server"). So a session that hands its CPUs to a waiting one pauses its workers.
#include "internal.h"
#include "ggml-cpu.h"

#include <condition_variable>
#include <cstdlib>
#include <string>
#include <cstdint>
#include <mutex>

#if defined(__linux__)
#include <sched.h>
#endif
#include <thread>

namespace {

int32_t usable_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? (int32_t) n : 1;
}

struct CpuBudget {
    std::mutex              mu;
    std::condition_variable cv;
    const int32_t           total = usable_cpus();
    int32_t                 free = total;
    uint64_t                next_ticket = 0;  // FIFO: a waiter is served only when its ticket is the oldest
    uint64_t                serving = 0;

    int32_t acquire(int32_t want) {
        const int32_t n = std::max<int32_t>(1, std::min(want, total));
        std::unique_lock<std::mutex> lk(mu);
        const uint64_t ticket = next_ticket++;
        cv.wait(lk, [&] { return ticket == serving && free >= n; });
        free -= n;
        serving++;
        cv.notify_all();  // the next ticket may fit beside this one
        return n;
    }
    // true: another session is waiting for CPUs.
    bool release(int32_t n) {
        bool contended;
        {
            std::lock_guard<std::mutex> lk(mu);
            free += n;
            contended = next_ticket != serving;
        }
        cv.notify_all();
        return contended;
    }
};

CpuBudget & budget() {
    static CpuBudget b;
    return b;
}

// How long a session's idle workers poll for the next graph before they sleep: ggml's level (0 none; 50, its
// default, measured 9% (SmolLM2) and 15% (Qwen-1.5B) faster than 0 on one session; under contention
// budgeted_decode pauses them instead). SIRIUS_POLL overrides it, for measurement.
uint32_t threadpool_poll() {
    const char * e = getenv("SIRIUS_POLL");
    return e ? (uint32_t) atoi(e) : 50;
}

// The session's pool of n threads, made on first use (nullptr if its threads cannot start).
ggml_threadpool * pool_of(sirius_session * s, int32_t n) {
    auto it = s->pools.find(n);
    if (it != s->pools.end()) return it->second;
    ggml_threadpool_params tpp = ggml_threadpool_params_default(n);
    tpp.poll = threadpool_poll();
    ggml_threadpool * tp = ggml_threadpool_new(&tpp);
    if (tp) s->pools[n] = tp;
    return tp;
}

void pause_pools(sirius_session * s) {
    for (auto & [n, tp] : s->pools) ggml_threadpool_pause(tp);
}

// Attaches the pools for (n, nb) threads; false (nothing changed) if one cannot start.
bool attach(sirius_session * s, int32_t n, int32_t nb) {
    ggml_threadpool * tp = pool_of(s, n);
    ggml_threadpool * tpb = pool_of(s, nb);
    if (!tp || !tpb) return false;
    for (auto & [k, p] : s->pools) {
        if (p != tp && p != tpb) ggml_threadpool_pause(p);  // pools going out of use sleep
    }
    llama_attach_threadpool(s->ctx, tp, tpb);
    llama_set_n_threads(s->ctx, n, nb);
    s->n_threads_cur = n;
    s->n_threads_batch_cur = nb;
    return true;
}

}  // namespace

namespace sirius {

// Each session runs its CPU graphs on ggml threadpools of its own (workers poll briefly, then sleep), not on
// OpenMP (CMakeLists.txt: GGML_OPENMP=OFF): libgomp counts the worker threads of every thread that ever ran a
// parallel region, and once they outnumber the CPUs it stops spinning at its barriers, hundreds per token. A
// host app with more than one thread touching the model (a stream's consumer, a server's slots) then decoded
// 40% slower on a 2-core VM (benchmarks/NOTES.md, "The server").
bool threads_init(sirius_session * s, int32_t n_threads, int32_t n_threads_batch) {
    s->n_threads_cfg = n_threads;
    s->n_threads_batch_cfg = n_threads_batch;
    s->want_threads = n_threads;
    s->want_threads_batch = n_threads_batch;
    return attach(s, n_threads, n_threads_batch);
}

void threads_free(sirius_session * s) {
    for (auto & [n, tp] : s->pools) ggml_threadpool_free(tp);
    s->pools.clear();
}

int32_t budgeted_decode(sirius_session * s, const llama_batch & b) {
    const int32_t n = s->want_threads.load(std::memory_order_relaxed);
    const int32_t nb = s->want_threads_batch.load(std::memory_order_relaxed);
    if (n != s->n_threads_cur || nb != s->n_threads_batch_cur) attach(s, n, nb);  // (kept as it was if not)
    const int32_t got = budget().acquire(std::max(s->n_threads_cur, s->n_threads_batch_cur));
    const int32_t rc = llama_decode(s->ctx, b);
    if (budget().release(got)) {
        // Another session takes these CPUs now: this one's workers must sleep rather than poll for the next graph
        // beside it (its next decode wakes them: ggml's kickoff resumes a paused pool).
        pause_pools(s);
    }
    return rc;
}

}  // namespace sirius

int32_t sirius_session_set_threads(sirius_session * s, int32_t n_threads, int32_t n_threads_batch) {
    if (!s) return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT, "session is NULL");
    if (n_threads < 1 || n_threads > s->n_threads_cfg || n_threads_batch < 1 || n_threads_batch > s->n_threads_batch_cfg) {
        return sirius::fail(SIRIUS_ERR_INVALID_ARGUMENT,
                            "threads must be in [1, " + std::to_string(s->n_threads_cfg) + "] and batch threads in [1, " +
                                std::to_string(s->n_threads_batch_cfg) + "] (the session's own), got " +
                                std::to_string(n_threads) + " and " + std::to_string(n_threads_batch));
    }
    s->want_threads = n_threads;
    s->want_threads_batch = n_threads_batch;
    return SIRIUS_OK;
}
