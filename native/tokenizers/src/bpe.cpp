// The BPE model: byte-level (GPT-2/RoBERTa/OPT) and SentencePiece-style (Llama) with
// byte_fallback and fuse_unk. Merges apply lowest rank first, leftmost on ties, as tokenizers'
// Word::merge_all with its priority queue (stale queue entries skipped the same way).
#include <mutex>
#include <queue>
#include <shared_mutex>

#include "internal.hpp"
#include "vocab.hpp"

namespace inbedder::tok::detail {
namespace {

struct MergeInfo {
  uint32_t rank;
  int32_t new_id;
};

class PairMap {
 public:
  void insert(int32_t a, int32_t b, MergeInfo m) {
    map_[key(a, b)] = m;  // a repeated pair: the last one wins, as tokenizers' HashMap collect
  }
  const MergeInfo* get(int32_t a, int32_t b) const {
    auto it = map_.find(key(a, b));
    return it == map_.end() ? nullptr : &it->second;
  }

 private:
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  std::unordered_map<uint64_t, MergeInfo> map_;
};

struct Sym {
  int32_t id;
  int32_t prev, next;
  uint32_t len;  // bytes; 0 = merged away
};

class BPE : public Model {
 public:
  Vocab vocab;
  PairMap merges;
  std::optional<std::string> unk;
  std::string prefix, suffix;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  int32_t byte_ids[256];

  void tokenize(std::string_view w, std::vector<Token>& out) const override {
    if (w.empty()) return;
    if (ignore_merges) {
      if (auto id = vocab.get(w)) {
        out.push_back({*id, 0, w.size()});
        return;
      }
    }
    {
      std::shared_lock<std::shared_mutex> lock(cache_mu_);
      auto it = cache_.find(std::string(w));
      if (it != cache_.end()) {
        emit(it->second, out);
        return;
      }
    }
    std::vector<Sym> syms = merge_word(w);
    std::vector<std::pair<int32_t, uint32_t>> word;
    word.reserve(syms.size());
    for (auto& s : syms)
      if (s.len) word.emplace_back(s.id, s.len);
    emit(word, out);
    if (w.size() < 256) {
      std::unique_lock<std::shared_mutex> lock(cache_mu_);
      if (cache_.size() >= 10000) cache_.clear();
      cache_.emplace(std::string(w), std::move(word));
    }
  }

  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab.get(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab.token(id); }
  size_t vocab_size() const override { return vocab.map.size(); }
  std::vector<std::string> vocab_tokens() const override { return vocab.map.keys(); }

 private:
  static void emit(const std::vector<std::pair<int32_t, uint32_t>>& word, std::vector<Token>& out) {
    size_t pos = 0;
    for (auto [id, len] : word) {
      out.push_back({id, pos, pos + len});
      pos += len;
    }
  }

  std::vector<Sym> merge_word(std::string_view w) const {
    std::vector<Sym> syms;
    syms.reserve(w.size());
    auto add = [&](int32_t id, size_t len) {
      int32_t n = static_cast<int32_t>(syms.size());
      syms.push_back({id, n - 1, n + 1, static_cast<uint32_t>(len)});
    };
    bool has_unk = false;  // a pending unk (id, bytes), fused while fuse_unk
    int32_t unk_id = 0;
    size_t unk_len = 0;
    std::string buf;
    for (size_t i = 0; i < w.size();) {
      size_t b = i;
      next_cp(w, i);
      bool first = b == 0, last = i >= w.size();
      std::string_view piece = w.substr(b, i - b);
      bool affix = (!first && !prefix.empty()) || (last && !suffix.empty());
      if (affix) {
        buf.clear();
        if (!first) buf += prefix;
        buf += piece;
        if (last) buf += suffix;
      }
      std::string_view s = affix ? std::string_view(buf) : piece;
      std::optional<int32_t> id = vocab.get(s);
      if (id) {
        if (has_unk) {
          add(unk_id, unk_len);
          has_unk = false;
        }
        add(*id, piece.size());
        continue;
      }
      if (byte_fallback) {
        // tokenizers falls back on the bytes of the piece with its affixes, and does not flush
        // a pending unk first.
        std::string_view src = s;
        bool all = true;
        for (unsigned char c : src)
          if (byte_ids[c] < 0) all = false;
        if (all) {
          for (unsigned char c : src) add(byte_ids[c], 1);
          continue;
        }
      }
      if (unk) {
        auto uid = vocab.get(*unk);
        if (!uid) fail("BPE: unk_token '" + *unk + "' is not in the vocabulary");
        if (has_unk && fuse_unk) {
          unk_len += piece.size();
        } else {
          if (has_unk) add(unk_id, unk_len);
          has_unk = true;
          unk_id = *uid;
          unk_len = piece.size();
        }
      }
    }
    if (has_unk) add(unk_id, unk_len);
    if (!syms.empty()) syms.back().next = -1;
    merge_all(syms);
    return syms;
  }

  struct QItem {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const QItem& o) const {  // std::priority_queue is a max-heap: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };

  void merge_all(std::vector<Sym>& s) const {
    std::priority_queue<QItem> q;
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (auto m = merges.get(s[i].id, s[i + 1].id))
        q.push({m->rank, static_cast<int32_t>(i), m->new_id});
    while (!q.empty()) {
      QItem top = q.top();
      q.pop();
      Sym& cur = s[static_cast<size_t>(top.pos)];
      if (cur.len == 0 || cur.next == -1) continue;
      auto np = static_cast<size_t>(cur.next);
      Sym right = s[np];
      auto m = merges.get(cur.id, right.id);
      if (!m || m->new_id != top.new_id) continue;
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      s[np].len = 0;
      if (right.next >= 0 && static_cast<size_t>(right.next) < s.size())
        s[static_cast<size_t>(right.next)].prev = top.pos;
      if (cur.prev >= 0) {
        if (auto pm = merges.get(s[static_cast<size_t>(cur.prev)].id, cur.id))
          q.push({pm->rank, cur.prev, pm->new_id});
      }
      if (cur.next >= 0 && static_cast<size_t>(cur.next) < s.size()) {
        if (auto nm = merges.get(cur.id, s[static_cast<size_t>(cur.next)].id))
          q.push({nm->rank, top.pos, nm->new_id});
      }
    }
  }

  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<std::pair<int32_t, uint32_t>>> cache_;
};

std::pair<std::string, std::string> merge_pair(const Json& m, size_t i) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    auto sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      fail("BPE: merge " + std::to_string(i) + " ('" + s + "') is not two tokens");
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  fail("BPE: merge " + std::to_string(i) + " must be a string or a pair of strings");
}

std::optional<std::string> opt_str(const Json& j, const char* name) {
  if (!j.contains(name) || j[name].is_null()) return std::nullopt;
  if (!j[name].is_string()) fail(std::string("BPE: '") + name + "' must be a string or null");
  return j[name].get<std::string>();
}

}  // namespace

std::unique_ptr<Model> make_bpe(const Json& j) {
  auto m = std::make_unique<BPE>();
  if (j.contains("dropout") && !j["dropout"].is_null())
    fail("BPE: dropout is not supported (it is random by design)");
  const Json& v = field(j, "vocab", "BPE model");
  if (!v.is_object()) fail("BPE model: 'vocab' must be an object");
  m->vocab.map.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer())
      fail("BPE model: id of '" + it.key() + "' is not an integer");
    m->vocab.add(it.key(), it.value().get<int64_t>(), "BPE model");
  }
  m->unk = opt_str(j, "unk_token");
  m->prefix = opt_str(j, "continuing_subword_prefix").value_or("");
  m->suffix = opt_str(j, "end_of_word_suffix").value_or("");
  m->fuse_unk = bool_field(j, "fuse_unk", "BPE model", false);
  m->byte_fallback = bool_field(j, "byte_fallback", "BPE model", false);
  m->ignore_merges = bool_field(j, "ignore_merges", "BPE model", false);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    m->byte_ids[b] = m->vocab.get(name).value_or(-1);
  }
  const Json& merges = field(j, "merges", "BPE model");
  if (!merges.is_array()) fail("BPE model: 'merges' must be an array");
  size_t prefix_len = m->prefix.size();
  for (size_t i = 0; i < merges.size(); ++i) {
    auto [a, b] = merge_pair(merges[i], i);
    auto ia = m->vocab.get(a), ib = m->vocab.get(b);
    if (!ia || !ib)
      fail("BPE model: merge " + std::to_string(i) + " uses a token not in the vocabulary: '" +
           (ia ? b : a) + "'");
    // The merged token drops the right part's continuing-subword prefix.
    std::string merged = a + (b.size() >= prefix_len && b.compare(0, prefix_len, m->prefix) == 0
                                  ? b.substr(prefix_len)
                                  : b);
    auto nid = m->vocab.get(merged);
    if (!nid)
      fail("BPE model: merge " + std::to_string(i) + " gives '" + merged +
           "', which is not in the vocabulary");
    m->merges.insert(*ia, *ib, {static_cast<uint32_t>(i), *nid});
  }
  return m;
}

}  // namespace inbedder::tok::detail
