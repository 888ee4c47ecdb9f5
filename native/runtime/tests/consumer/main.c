/* Embeds two texts with the C API; prints the vectors (one float per token of output). */
#include <stdio.h>
#include <stdlib.h>

#include <inbedder/inbedder.h>

/* inbedder::inbedder_static's interface defines INBEDDER_STATIC (INBEDDER_API empty); the shared
 * inbedder::inbedder does not. */
#if defined(CONSUMER_EXPECTS_STATIC) != defined(INBEDDER_STATIC)
#error "INBEDDER_STATIC must come from (and only from) inbedder::inbedder_static"
#endif

int main(int argc, char** argv) {
  const char* texts[2] = {"I love cats!", "ok"};
  const char* instruction = "What animal?";
  inbedder_model* model = NULL;
  inbedder_result* result = NULL;
  const float* v = NULL;
  size_t n = 0, dim = 0, i;
  if (argc != 2) return 2;
  if (inbedder_model_open(argv[1], NULL, &model) != INBEDDER_OK ||
      inbedder_encode(model, texts, NULL, 2, &instruction, 1, NULL, &result) != INBEDDER_OK ||
      inbedder_result_embeddings(result, &v, &n, &dim) != INBEDDER_OK) {
    fprintf(stderr, "error: %s\n", inbedder_last_error());
    inbedder_model_close(model);
    return 1;
  }
  for (i = 0; i < n * dim; ++i) printf("%.9g\n", v[i]);
  inbedder_result_free(result);
  inbedder_model_close(model);
  return 0;
}
