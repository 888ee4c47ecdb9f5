// Truncation as tokenizers' truncate_encodings (stride 0, overflow dropped): longest_first
// splits the budget between the two sequences, only_first / only_second cut one of them.
#include <algorithm>

#include "internal.hpp"

namespace inbedder::tok::detail {

void Enc::truncate(size_t max_len, TruncationDirection dir) {
  size_t n = ids.size();
  if (max_len >= n) return;
  size_t a = dir == TruncationDirection::Right ? 0 : n - max_len;
  auto cut = [&](auto& v) {
    using V = std::decay_t<decltype(v)>;
    v = V(v.begin() + static_cast<std::ptrdiff_t>(a),
          v.begin() + static_cast<std::ptrdiff_t>(a + max_len));
  };
  cut(ids);
  cut(type_ids);
  cut(seq_ids);
  cut(tokens);
  cut(offsets);
  cut(special);
}

void truncate_encodings(Enc& a, Enc* b, const Truncation& t) {
  if (t.max_length == 0) {
    a.truncate(0, t.direction);
    if (b) b->truncate(0, t.direction);
    return;
  }
  size_t total = a.ids.size() + (b ? b->ids.size() : 0);
  if (total <= t.max_length) return;
  size_t to_remove = total - t.max_length;
  if (t.strategy == TruncationStrategy::LongestFirst) {
    if (!b) {
      a.truncate(total - to_remove, t.direction);
      return;
    }
    size_t n1 = a.ids.size(), n2 = b->ids.size();
    bool swap = n1 > n2;
    if (swap) std::swap(n1, n2);
    if (n1 > t.max_length)
      n2 = n1;
    else
      n2 = std::max(n1, t.max_length - n1);
    if (n1 + n2 > t.max_length) {
      n1 = t.max_length / 2;
      n2 = n1 + t.max_length % 2;
    }
    if (swap) std::swap(n1, n2);
    a.truncate(n1, t.direction);
    b->truncate(n2, t.direction);
    return;
  }
  Enc* target = &a;
  if (t.strategy == TruncationStrategy::OnlySecond) {
    if (!b) fail("Truncation error: Second sequence not provided");
    target = b;
  }
  size_t len = target->ids.size();
  if (len > to_remove)
    target->truncate(len - to_remove, t.direction);
  else
    fail("Truncation error: Sequence to truncate too short to respect the provided max_length");
}

}  // namespace inbedder::tok::detail
