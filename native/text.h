// Incremental text output for generation: releases text only once it is final, i.e. it cannot be the start of
// a stop string and does not end inside a UTF-8 character.
#pragma once
#include <string>
#include <vector>

namespace sirius {

class TextStream {
public:
    explicit TextStream(std::vector<std::string> stops) : stops_(std::move(stops)) {}

    // Appends a token's bytes; returns the text that became final. Sets stopped() when a stop string appears:
    // the returned text then ends just before it and nothing more is released.
    std::string push(const std::string & piece);
    // Releases whatever is held (end of generation); nothing if a stop string was seen.
    std::string flush();
    bool stopped() const { return stopped_; }

private:
    std::vector<std::string> stops_;
    std::string held_;
    bool stopped_ = false;
};

// Length of the longest prefix of s that does not end inside a UTF-8 multi-byte sequence.
size_t utf8_complete_prefix(const std::string & s);

}  // namespace sirius
