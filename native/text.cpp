// Incremental text output (text.h): pieces are held back while they may still start a stop string or an
// unfinished UTF-8 sequence.

#include "text.h"

#include <algorithm>

namespace sirius {

size_t utf8_complete_prefix(const std::string & s) {
    // Walk back over at most 3 continuation bytes to the lead byte of the last character.
    size_t n = s.size();
    size_t i = n;
    int back = 0;
    while (i > 0 && back < 4) {
        unsigned char c = (unsigned char) s[i - 1];
        if ((c & 0xC0) != 0x80) {  // lead byte or ASCII
            size_t need = (c < 0x80) ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
            return (n - (i - 1) >= need) ? n : i - 1;
        }
        --i;
        ++back;
    }
    return n;  // not UTF-8 (stray continuation bytes): release as is
}

std::string TextStream::push(const std::string & piece) {
    if (stopped_) {
        return {};
    }
    held_ += piece;

    // Earliest stop string occurrence wins. Every occurrence lies inside held_: released text never ends
    // with a prefix of a stop string.
    size_t best = std::string::npos;
    for (const auto & s : stops_) {
        if (s.empty()) continue;
        size_t p = held_.find(s);
        if (p != std::string::npos && p < best) best = p;
    }
    if (best != std::string::npos) {
        stopped_ = true;
        std::string out = held_.substr(0, best);
        held_.clear();
        return out;
    }

    // Hold back the longest suffix that could still grow into a stop string.
    size_t keep = 0;
    for (const auto & s : stops_) {
        size_t max_k = std::min(s.size() > 0 ? s.size() - 1 : 0, held_.size());
        for (size_t k = max_k; k > keep; --k) {
            if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
                keep = k;
                break;
            }
        }
    }
    size_t cut = held_.size() - keep;
    cut = utf8_complete_prefix(held_.substr(0, cut));
    std::string out = held_.substr(0, cut);
    held_.erase(0, cut);
    return out;
}

std::string TextStream::flush() {
    if (stopped_) return {};
    std::string out;
    out.swap(held_);
    return out;
}

}  // namespace sirius
