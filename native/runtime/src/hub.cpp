// resolve_bundle over the local bundle cache (runtime/hub.py's _materialize layout).
#include "hub.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

#include "bundle.hpp"

namespace inbedder {
namespace fs = std::filesystem;

bool is_hub_name(const std::string& name) {
  static const std::regex part_re(
      "[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?/"
      "[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?");
  return std::regex_match(name, part_re) && name.find("..") == std::string::npos &&
         name.find("--") == std::string::npos;
}

std::string hub_cache_dir() {
  auto env = [](const char* k) -> std::string {
    const char* v = std::getenv(k);
    return v && *v ? v : "";
  };
  if (!env("HF_HUB_CACHE").empty()) return env("HF_HUB_CACHE");
  if (!env("HF_HOME").empty()) return env("HF_HOME") + "/hub";
  if (!env("XDG_CACHE_HOME").empty()) return env("XDG_CACHE_HOME") + "/huggingface/hub";
  return env("HOME") + "/.cache/huggingface/hub";
}

std::string resolve_bundle(const std::string& name_or_path) {
  std::error_code ec;
  if (fs::is_directory(name_or_path, ec) || !is_hub_name(name_or_path)) return name_or_path;
  const std::string cache = pure_path(hub_cache_dir());
  std::string folder = "models--" + name_or_path;
  folder.replace(folder.find('/'), 1, "--");
  const std::string ref = cache + "/" + folder + "/refs/main";
  std::ifstream in(ref);
  std::string commit;
  std::getline(in, commit);
  const std::string how =
      "; the native runtime does not download: fetch it once with the Python runtime "
      "(Embedder(\"" +
      name_or_path + "\") or inbedder embed -m " + name_or_path + ")";
  if (commit.empty())
    throw BundleError(name_or_path +
                      ": no such bundle directory, and not in the local hub cache (" + ref +
                      " is missing)" + how);
  const std::string dir = pure_path(fs::path(cache).parent_path().string() + "/inbedder/bundles/" +
                                    folder + "/" + commit);
  if (!fs::is_directory(dir, ec))
    throw BundleError(name_or_path +
                      ": no such bundle directory, and the local bundle cache has no " + dir +
                      " (commit " + commit + " of refs/main)" + how);
  return dir;
}

}  // namespace inbedder
