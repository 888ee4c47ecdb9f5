// inbedder-bench: the native side of bench/native.py. Opens a bundle, embeds the first text
// (time from open to first vector), then embeds all texts (one per line of TEXTS_FILE) in
// batches of BATCH, RUNS times; prints one JSON line: open_to_first_vector_s, median_s,
// texts_per_s, cpu_s_per_text (median run's CPU seconds, all threads, per text),
// rss_after_open_mb (VmRSS once open), peak_rss_mb (VmHWM).
#include <inbedder/inbedder.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The process's user + system CPU seconds (all threads): the work done, less sensitive than
// wall time to other jobs on a shared machine.
double cpu_s() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// A /proc/self/status figure in MB ("VmHWM:" peak resident, "VmRSS:" resident now).
double status_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + std::strlen(key)) / 1024.0;
  return 0;
}

void check(inbedder_status s) {
  if (s != INBEDDER_OK) {
    std::fprintf(stderr, "inbedder-bench: %s\n", inbedder_last_error());
    std::exit(2);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr,
                 "usage: inbedder-bench BUNDLE TEXTS_FILE INSTRUCTION BATCH RUNS THREADS\n");
    return 2;
  }
  std::vector<std::string> texts;
  std::ifstream in(argv[2]);
  for (std::string line; std::getline(in, line);) texts.push_back(line);
  const char* instruction = argv[3];
  long batch = std::atol(argv[4]), runs = std::atol(argv[5]), threads = std::atol(argv[6]);
  std::vector<const char*> ptrs;
  for (const auto& t : texts) ptrs.push_back(t.c_str());

  double t0 = now();
  inbedder_options* open = nullptr;
  check(inbedder_options_create(&open));
  check(inbedder_options_set_int(open, "threads", threads));
  inbedder_model* m = nullptr;
  check(inbedder_model_open(argv[1], open, &m));
  double open_rss = status_mb("VmRSS:");
  inbedder_result* r = nullptr;
  check(inbedder_encode(m, ptrs.data(), nullptr, 1, &instruction, 1, nullptr, &r));
  inbedder_result_free(r);
  double first = now() - t0;

  inbedder_options* enc = nullptr;
  check(inbedder_options_create(&enc));
  check(inbedder_options_set_int(enc, "batch_size", batch));
  auto step = [&] {
    check(inbedder_encode(m, ptrs.data(), nullptr, ptrs.size(), &instruction, 1, enc, &r));
    inbedder_result_free(r);
  };
  step();  // warm-up
  std::vector<double> times, cpu;
  for (long i = 0; i < runs; ++i) {
    double t = now(), c = cpu_s();
    step();
    times.push_back(now() - t);
    cpu.push_back(cpu_s() - c);
  }
  std::sort(times.begin(), times.end());
  std::sort(cpu.begin(), cpu.end());
  double med = times[times.size() / 2];
  std::printf(
      "{\"open_to_first_vector_s\": %.4f, \"median_s\": %.5f, \"texts_per_s\": %.3f, "
      "\"cpu_s_per_text\": %.5f, \"rss_after_open_mb\": %.1f, \"peak_rss_mb\": %.1f}\n",
      first, med, double(ptrs.size()) / med, cpu[cpu.size() / 2] / double(ptrs.size()), open_rss,
      status_mb("VmHWM:"));
  inbedder_options_destroy(enc);
  inbedder_options_destroy(open);
  inbedder_model_close(m);
  return 0;
}
