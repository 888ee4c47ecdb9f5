// inbedder-embed: the native twin of `inbedder embed` (inbedder/cli.py), on the C API only.
// Same flags, same input formats (one text per line, or JSONL with "text" and an optional
// "instruction"), same outputs (.npy, float32 unless --precision; answers as {"text", "answer"}
// JSONL), same messages; exit 1 for bad input files (Python's SystemExit), 2 for errors of the
// runtime.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "inbedder/inbedder.h"
#include "npy.hpp"

namespace {

const char* kUsage =
    "usage: inbedder-embed -m MODEL -o OUTPUT [-i INSTRUCTION] [--answers JSONL]\n"
    "                      [--format {auto,lines,jsonl}] [--batch-size N] [--normalize]\n"
    "                      [--truncation {input,reference}] [--device {cpu,cuda,auto}]\n"
    "                      [--verify {stamp,full,none}] [--session-cache DIR]\n"
    "                      [--no-row-ops]\n"
    "                      [--precision {float32,float16,int8,uint8,binary,ubinary}]\n"
    "                      [--threads N] [--spinning | --no-spinning] [--decode-steps K]\n"
    "                      [--max-new-tokens N] [--overwrite] [-q] [input]\n";

struct Args {
  std::string model, output, input = "-", format = "auto", truncation = "input", device = "cpu",
                             verify = "stamp", precision = "float32";
  std::optional<std::string> instruction, answers, session_cache;
  long long batch_size = 32;
  std::optional<long long> threads, decode_steps, max_new_tokens;
  bool normalize = false, quiet = false, overwrite = false;
  bool spinning = false;  // idle onnxruntime threads busy-wait (inbedder embed --spinning)
  bool row_ops = true;    // a graph's row-ops form when the bundle has one (open option row_ops)
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "%sinbedder-embed: error: %s\n", kUsage, msg.c_str());
  std::exit(2);
}

[[noreturn]] void exit_msg(const std::string& msg) {  // Python's SystemExit(msg)
  std::fprintf(stderr, "%s\n", msg.c_str());
  std::exit(1);
}

long long to_int(const std::string& flag, const std::string& v) {
  try {
    std::size_t used = 0;
    long long n = std::stoll(v, &used);
    if (used == v.size()) return n;
  } catch (...) {
  }
  usage_error("argument " + flag + ": invalid int value: '" + v + "'");
}

Args parse(int argc, char** argv) {
  Args a;
  bool have_model = false, have_output = false, have_input = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    bool inline_value = false;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
      value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
      inline_value = true;
    }
    auto next = [&]() -> std::string {
      if (inline_value) return value;
      if (i + 1 >= argc) usage_error("argument " + arg + ": expected one argument");
      return argv[++i];
    };
    // A switch takes no value: "--normalize=1" is refused, in argparse's words.
    auto no_value = [&](const std::string& name) {
      if (inline_value)
        usage_error("argument " + name + ": ignored explicit argument '" + value + "'");
    };
    auto choice = [&](const std::vector<std::string>& allowed) {
      std::string v = next();
      for (const auto& c : allowed)
        if (v == c) return v;
      std::string list;
      for (const auto& c : allowed) list += (list.empty() ? "'" : ", '") + c + "'";
      usage_error("argument " + arg + ": invalid choice: '" + v + "' (choose from " + list + ")");
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "-m" || arg == "--model") {
      a.model = next(), have_model = true;
    } else if (arg == "-o" || arg == "--output") {
      a.output = next(), have_output = true;
    } else if (arg == "-i" || arg == "--instruction") {
      a.instruction = next();
    } else if (arg == "--answers") {
      a.answers = next();
    } else if (arg == "--format") {
      a.format = choice({"auto", "lines", "jsonl"});
    } else if (arg == "--batch-size") {
      a.batch_size = to_int(arg, next());
    } else if (arg == "--normalize") {
      no_value(arg), a.normalize = true;
    } else if (arg == "--truncation") {
      a.truncation = choice({"input", "reference"});
    } else if (arg == "--precision") {
      a.precision = choice({"float32", "float16", "int8", "uint8", "binary", "ubinary"});
    } else if (arg == "--device") {
      a.device = choice({"cpu", "cuda", "auto"});
    } else if (arg == "--verify") {
      a.verify = choice({"stamp", "full", "none"});
    } else if (arg == "--threads") {
      a.threads = to_int(arg, next());
    } else if (arg == "--session-cache") {
      a.session_cache = next();
    } else if (arg == "--no-row-ops") {
      no_value("--no-row-ops");
      a.row_ops = false;
    } else if (arg == "--spinning" || arg == "--no-spinning") {
      no_value("--spinning/--no-spinning");
      a.spinning = arg == "--spinning";  // the last one given wins, as argparse's
    } else if (arg == "--decode-steps") {
      a.decode_steps = to_int(arg, next());
    } else if (arg == "--max-new-tokens") {
      a.max_new_tokens = to_int(arg, next());
    } else if (arg == "-q" || arg == "--quiet") {
      no_value("-q/--quiet"), a.quiet = true;
    } else if (arg == "--overwrite") {
      no_value(arg), a.overwrite = true;
    } else if ((arg.size() > 1 && arg[0] == '-') || have_input) {
      usage_error("unrecognized arguments: " + arg);
    } else {
      a.input = arg, have_input = true;
    }
  }
  if (!have_model || !have_output)
    usage_error(std::string("the following arguments are required: ") +
                (!have_model ? "-m/--model" : "") + (!have_model && !have_output ? ", " : "") +
                (!have_output ? "-o/--output" : ""));
  return a;
}

// Lines split on "\n" only, one trailing "\r" stripped; every other separator (U+2028, U+0085,
// form feed, a lone "\r") stays inside its line (as inbedder/cli.py: _split_lines). A leading
// UTF-8 BOM is not part of the first text.
std::vector<std::string> split_lines(std::string raw) {
  if (raw.rfind("\xEF\xBB\xBF", 0) == 0) raw.erase(0, 3);
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < raw.size()) {
    std::size_t end = raw.find('\n', start);
    if (end == std::string::npos) end = raw.size();
    std::string line = raw.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

bool is_py_space_at(const std::string& s, std::size_t i, std::size_t* len) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  *len = 1;
  if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return true;
  if (c == 0xc2 && i + 1 < s.size()) {
    unsigned char d = static_cast<unsigned char>(s[i + 1]);
    *len = 2;
    return d == 0x85 || d == 0xa0;
  }
  if (c == 0xe1 && i + 2 < s.size() && s.compare(i, 3, "\xe1\x9a\x80") == 0) return *len = 3, true;
  if (c == 0xe2 && i + 2 < s.size()) {
    unsigned char d = static_cast<unsigned char>(s[i + 1]),
                  e = static_cast<unsigned char>(s[i + 2]);
    *len = 3;
    return (d == 0x80 && ((e >= 0x80 && e <= 0x8a) || e == 0xa8 || e == 0xa9 || e == 0xaf)) ||
           (d == 0x81 && e == 0x9f);
  }
  if (c == 0xe3 && i + 2 < s.size() && s.compare(i, 3, "\xe3\x80\x80") == 0) return *len = 3, true;
  return false;
}

// The text after Python's lstrip() (and whether anything but whitespace is there).
std::string lstrip(const std::string& s) {
  std::size_t i = 0, len = 0;
  while (i < s.size() && is_py_space_at(s, i, &len)) i += len;
  return s.substr(i);
}

// Nothing to embed: empty, or spaces and tabs only (as inbedder/cli.py: _blank).
bool blank(const std::string& s) { return s.find_first_not_of(" \t") == std::string::npos; }

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// --format auto: by extension (.jsonl/.json/.ndjson: JSONL; .txt: lines), else JSONL when the
// first non-blank line is a JSON object with a string "text", else lines.
std::string detect_format(const std::vector<std::string>& lines, const std::string& source) {
  std::string lower = source;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ends_with(lower, ".jsonl") || ends_with(lower, ".json") || ends_with(lower, ".ndjson"))
    return "jsonl";
  if (ends_with(lower, ".txt")) return "lines";
  for (const auto& ln : lines) {
    if (blank(ln)) continue;
    if (lstrip(ln).rfind('{', 0) != 0) return "lines";
    try {
      nlohmann::json rec = nlohmann::json::parse(ln);
      return rec.is_object() && rec.contains("text") && rec["text"].is_string() ? "jsonl" : "lines";
    } catch (const nlohmann::json::exception&) {
      return "lines";
    }
  }
  return "lines";
}

struct Texts {
  std::vector<std::string> texts;
  std::optional<std::vector<std::optional<std::string>>> per_text;  // nullopt: no instruction
  std::vector<std::size_t> numbers;                                 // line of each text
  std::string format;
  std::size_t lines = 0;
};

Texts read_texts(const std::string& raw, std::string fmt, const std::string& source) {
  std::vector<std::string> lines = split_lines(raw);
  if (fmt == "auto") fmt = detect_format(lines, source);
  Texts out;
  out.format = fmt;
  out.lines = lines.size();
  if (fmt == "lines") {
    for (std::size_t n = 1; n <= lines.size(); ++n)
      if (!blank(lines[n - 1])) out.texts.push_back(lines[n - 1]), out.numbers.push_back(n);
    return out;
  }
  std::vector<std::optional<std::string>> instructions;
  for (std::size_t n = 1; n <= lines.size(); ++n) {
    const std::string& line = lines[n - 1];
    if (blank(line)) continue;
    nlohmann::json rec;
    try {
      rec = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      exit_msg(source + ":" + std::to_string(n) + ": not valid JSON (" + e.what() + ")");
    }
    if (!rec.is_object() || !rec.contains("text") || !rec["text"].is_string())
      exit_msg(source + ":" + std::to_string(n) + ": a JSONL record needs a string field 'text'");
    std::optional<std::string> instr;
    if (rec.contains("instruction") && !rec["instruction"].is_null()) {
      if (!rec["instruction"].is_string())
        exit_msg(source + ":" + std::to_string(n) + ": 'instruction' must be a string");
      instr = rec["instruction"].get<std::string>();
    }
    out.texts.push_back(rec["text"].get<std::string>());
    out.numbers.push_back(n);
    instructions.push_back(instr);
  }
  bool any = false;
  for (const auto& i : instructions) any = any || i.has_value();
  if (any) out.per_text = instructions;
  return out;
}

// json.dumps(s, ensure_ascii=False)
std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          out += b;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

[[noreturn]] void runtime_error(const std::string& msg) {
  std::fprintf(stderr, "inbedder-embed: error: %s\n", msg.c_str());
  std::exit(2);
}

void check(inbedder_status s) {
  if (s != INBEDDER_OK) runtime_error(inbedder_last_error());
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  std::string raw, source;
  if (a.input == "-") {
    raw.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    source = "<stdin>";
  } else {
    std::ifstream f(a.input, std::ios::binary);
    if (!f) exit_msg(a.input + ": no such input file");
    raw.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    source = a.input;
  }
  Texts in = read_texts(raw, a.format, source);
  std::string out_path = ends_with(a.output, ".npy") ? a.output : a.output + ".npy";
  std::vector<std::string> outputs = {out_path};
  if (a.answers) outputs.push_back(*a.answers);
  for (const auto& o : outputs) {
    if (std::filesystem::is_directory(o)) exit_msg(o + " is a directory; name the output file");
    if (std::filesystem::exists(o) && !a.overwrite)
      exit_msg(o + " exists; pass --overwrite to replace it");
  }

  inbedder_options* open_opts = nullptr;
  check(inbedder_options_create(&open_opts));
  check(inbedder_options_set_string(open_opts, "device", a.device.c_str()));
  check(inbedder_options_set_string(open_opts, "verify", a.verify.c_str()));
  if (a.threads)
    check(inbedder_options_set_int(open_opts, "threads", static_cast<long>(*a.threads)));
  check(inbedder_options_set_int(open_opts, "spinning", a.spinning ? 1 : 0));
  check(inbedder_options_set_int(open_opts, "row_ops", a.row_ops ? 1 : 0));
  if (a.session_cache)
    check(inbedder_options_set_string(open_opts, "session_cache", a.session_cache->c_str()));
  inbedder_model* model = nullptr;
  check(inbedder_model_open(a.model.c_str(), open_opts, &model));
  inbedder_options_destroy(open_opts);
  int answers_family = 0;
  check(inbedder_model_answers(model, &answers_family));
  const char* needs = nullptr;
  check(inbedder_model_info(model, "needs_instruction", &needs));
  if (!a.instruction && std::string(needs) == "yes") {
    // The Python runtime's rule: an instruction must be given (-i, or one per JSONL record).
    const char* recipe = nullptr;
    check(inbedder_model_info(model, "recipe", &recipe));
    if (!in.per_text)
      exit_msg(std::string("-i/--instruction is required for this bundle (") + recipe +
               "), or an 'instruction' field in every JSONL record");
    for (std::size_t k = 0; k < in.texts.size(); ++k)
      if (!(*in.per_text)[k])
        exit_msg(source + ":" + std::to_string(in.numbers[k]) +
                 ": the record has no 'instruction' and no -i was given");
  }
  std::vector<std::string>
      per_text;  // a record's own instruction wins, -i stands in for the others
  if (in.per_text)
    for (const auto& i : *in.per_text)
      per_text.push_back(i && !i->empty() ? *i : a.instruction.value_or(""));
  size_t dim = 0;
  check(inbedder_model_dim(model, &dim));

  inbedder_options* enc = nullptr;
  check(inbedder_options_create(&enc));
  check(inbedder_options_set_int(enc, "batch_size", static_cast<long>(a.batch_size)));
  check(inbedder_options_set_int(enc, "normalize", static_cast<long>(a.normalize)));
  check(inbedder_options_set_int(enc, "answers", static_cast<long>(a.answers.has_value())));
  check(inbedder_options_set_string(enc, "truncation", a.truncation.c_str()));
  check(inbedder_options_set_string(enc, "precision", a.precision.c_str()));
  if (a.decode_steps)
    check(inbedder_options_set_int(enc, "decode_steps", static_cast<long>(*a.decode_steps)));
  if (a.max_new_tokens)
    check(inbedder_options_set_int(enc, "max_new_tokens", static_cast<long>(*a.max_new_tokens)));

  // The output in --precision: n rows of cols elements (numpy dtype descr) as bytes.
  const bool packed = a.precision == "binary" || a.precision == "ubinary";
  std::size_t cols = packed ? (dim + 7) / 8 : dim;
  std::size_t element_bytes = a.precision == "float32" ? 4 : a.precision == "float16" ? 2 : 1;
  const char* descr = a.precision == "float32"                             ? "<f4"
                      : a.precision == "float16"                           ? "<f2"
                      : (a.precision == "int8" || a.precision == "binary") ? "|i1"
                                                                           : "|u1";
  std::vector<unsigned char> vecs;
  std::vector<std::string> answers;
  const std::size_t n = in.texts.size();
  if (n) {
    std::vector<const char*> t;
    std::vector<size_t> lens;
    for (const auto& s : in.texts) t.push_back(s.data()), lens.push_back(s.size());
    std::vector<const char*> ins;
    std::string one = a.instruction.value_or("");
    if (in.per_text)
      for (const auto& s : per_text) ins.push_back(s.c_str());
    else
      ins.push_back(one.c_str());
    inbedder_result* r = nullptr;
    check(inbedder_encode(model, t.data(), lens.data(), n, ins.data(), ins.size(), enc, &r));
    check(inbedder_result_output_shape(r, nullptr, nullptr, &cols, &element_bytes));
    vecs.resize(n * cols * element_bytes);
    check(inbedder_result_copy_output(r, vecs.data(), vecs.size(), nullptr));
    if (a.answers) {
      for (std::size_t i = 0; i < n; ++i) {
        const char* s = nullptr;
        size_t len = 0;
        check(inbedder_result_answer(r, i, &s, &len));
        answers.emplace_back(s, len);
      }
    }
    inbedder_result_free(r);
  } else if (a.answers && !answers_family) {
    runtime_error(
        "this bundle embeds texts without answering; return_answers=True is not available");
  }
  inbedder_options_destroy(enc);
  inbedder_model_close(model);

  try {
    std::filesystem::path parent = std::filesystem::path(out_path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    inbedder::write_npy(out_path, descr, vecs.data(), n, cols, element_bytes);
  } catch (const std::exception& e) {
    runtime_error(e.what());
  }
  if (a.answers) {
    std::ofstream f(*a.answers, std::ios::binary);
    if (!f) runtime_error(*a.answers + ": cannot write");
    for (std::size_t i = 0; i < n; ++i)
      f << "{\"text\": " << json_str(in.texts[i]) << ", \"answer\": " << json_str(answers[i])
        << "}\n";
  }
  if (!a.quiet) {
    std::size_t skipped = in.lines - n;
    std::string blanks = skipped ? ", " + std::to_string(skipped) + " blank line(s) skipped" : "";
    std::string dtype = packed ? (a.precision == "binary" ? "int8" : "uint8") : a.precision;
    std::fprintf(stderr, "wrote %s: %zu x %zu %s (%s read as %s%s)\n", out_path.c_str(), n, cols,
                 dtype.c_str(), source.c_str(), in.format.c_str(), blanks.c_str());
  }
  return 0;
}
