// Bundles by hub name, as runtime/hub.py's resolve_bundle, without the network: the native
// runtime opens only the local bundle cache that the Python runtime fills when it fetches a name.
#pragma once

#include <string>

namespace inbedder {

// True for "org/name" as the Hub spells repository ids (runtime/hub.py's is_hub_name).
bool is_hub_name(const std::string& name);

// The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
std::string hub_cache_dir();

// An existing directory as is; a hub name that is not a directory: the bundle the Python runtime
// materialized for the commit its cache's refs/main names,
// <hub cache>/../inbedder/bundles/models--ORG--NAME/<commit>/. Anything else, or a name not in
// the cache, is a BundleError saying so (nothing is downloaded).
std::string resolve_bundle(const std::string& name_or_path);

}  // namespace inbedder
