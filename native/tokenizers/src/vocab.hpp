// Vocabulary storage shared by the models: token -> id looked up by string_view without
// allocating (C++17's unordered_map cannot), and id -> token.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "internal.hpp"

namespace inbedder::tok::detail {

class StrMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, -1);
  }
  // Returns false if the key was already present (the value is then overwritten).
  bool insert(std::string key, int32_t value) {
    if ((keys_.size() + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    size_t i = find_slot(key);
    if (slots_[i] >= 0) {
      values_[static_cast<size_t>(slots_[i])] = value;
      return false;
    }
    slots_[i] = static_cast<int32_t>(keys_.size());
    keys_.push_back(std::move(key));
    values_.push_back(value);
    return true;
  }
  std::optional<int32_t> get(std::string_view key) const {
    if (slots_.empty()) return std::nullopt;
    int32_t s = slots_[find_slot(key)];
    if (s < 0) return std::nullopt;
    return values_[static_cast<size_t>(s)];
  }
  size_t size() const { return keys_.size(); }
  const std::vector<std::string>& keys() const { return keys_; }
  const std::vector<int32_t>& values() const { return values_; }

 private:
  size_t find_slot(std::string_view key) const {
    size_t mask = slots_.size() - 1;
    size_t i = std::hash<std::string_view>{}(key)&mask;
    while (slots_[i] >= 0 && keys_[static_cast<size_t>(slots_[i])] != key) i = (i + 1) & mask;
    return i;
  }
  void rehash(size_t cap) {
    slots_.assign(cap, -1);
    for (size_t k = 0; k < keys_.size(); ++k) slots_[find_slot(keys_[k])] = static_cast<int32_t>(k);
  }
  std::vector<int32_t> slots_;
  std::vector<std::string> keys_;
  std::vector<int32_t> values_;
};

// token -> id and id -> token; ids must be in [0, kMaxId).
struct Vocab {
  static constexpr int64_t kMaxId = 1 << 24;
  StrMap map;
  std::vector<std::string> by_id;
  std::vector<uint8_t> has_id;

  void add(const std::string& token, int64_t id, const char* component) {
    if (id < 0 || id >= kMaxId)
      fail(std::string(component) + ": token id " + std::to_string(id) + " of '" + token +
           "' is out of range");
    auto u = static_cast<size_t>(id);
    if (u >= by_id.size()) {
      by_id.resize(u + 1);
      has_id.resize(u + 1, 0);
    }
    by_id[u] = token;
    has_id[u] = 1;
    map.insert(token, static_cast<int32_t>(id));
  }
  std::optional<int32_t> get(std::string_view t) const { return map.get(t); }
  const std::string* token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= by_id.size() || !has_id[static_cast<size_t>(id)])
      return nullptr;
    return &by_id[static_cast<size_t>(id)];
  }
};

}  // namespace inbedder::tok::detail
