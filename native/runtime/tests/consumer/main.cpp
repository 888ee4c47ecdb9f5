// Embeds two texts with the RAII C++ wrappers; prints the vectors.
#include <cstdio>
#include <inbedder/inbedder.hpp>

// inbedder::inbedder_static's interface defines INBEDDER_STATIC (INBEDDER_API empty); the shared
// inbedder::inbedder does not.
#if defined(CONSUMER_EXPECTS_STATIC) != defined(INBEDDER_STATIC)
#error "INBEDDER_STATIC must come from (and only from) inbedder::inbedder_static"
#endif

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    inbedder::Options open;
    open.set("device", "cpu").set("threads", 1);
    inbedder::Model model(argv[1], open);
    inbedder::Result r = model.encode({"I love cats!", "ok"}, {"What animal?"});
    for (float x : r.all()) std::printf("%.9g\n", x);
  } catch (const inbedder::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
