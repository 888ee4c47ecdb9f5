// Test driver for internal pieces: `sha256 FILE...` prints one hex digest per line;
// `npy OUT ROWS COLS` writes floats 0, 1, 2, ... as a (ROWS, COLS) .npy; `manifest DIR [0|1]`
// prints the BundleError text (or "ok") of opening a bundle's manifest; `session-options 0|1`
// prints the spinning entries of the session options built for a CPU graph with spinning off / on.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "npy.hpp"
#include "session.hpp"
#include "sha256.hpp"

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "sha256") == 0) {
    for (int i = 2; i < argc; ++i) std::printf("%s\n", inbedder::sha256_file(argv[i]).c_str());
    return 0;
  }
  if (argc == 5 && std::strcmp(argv[1], "npy") == 0) {
    std::size_t r = std::stoul(argv[3]), c = std::stoul(argv[4]);
    std::vector<float> v(r * c);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.5f;
    inbedder::write_npy_f32(argv[2], v.data(), r, c);
    return 0;
  }
  if ((argc == 3 || argc == 4) && std::strcmp(argv[1], "manifest") == 0) {
    try {
      // mode: 1 / stamp (default), 0 / none, full; the files hashed whole go to stderr.
      std::string mode = argc == 3 ? "stamp" : argv[3];
      mode = mode == "1" ? "stamp" : mode == "0" ? "none" : mode;
      inbedder::hash_observer() = [](const std::string& name) {
        std::fprintf(stderr, "hashed %s\n", name.c_str());
      };
      inbedder::load_manifest(argv[2], inbedder::verify_mode(mode));
      std::printf("ok\n");
    } catch (const inbedder::BundleError& e) {
      std::printf("%s\n", e.what());
    }
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "session-options") == 0) {
    inbedder::ThreadOptions threads{1, std::strcmp(argv[2], "1") == 0};
    Ort::SessionOptions opts = inbedder::session_options(inbedder::GraphSpec{}, "cpu", threads);
    for (const char* key : {"session.intra_op.allow_spinning", "session.inter_op.allow_spinning"})
      std::printf("%s=%s\n", key, opts.GetConfigEntry(key).c_str());
    return 0;
  }
  std::fprintf(stderr,
               "usage: inbedder_internal_tool sha256 FILE... | npy OUT R C | manifest DIR | "
               "session-options 0|1\n");
  return 2;
}
