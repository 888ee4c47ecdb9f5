/* inbedder.h - the C API of libinbedder: open a bundle, embed texts, get vectors and answers.
 *
 * Scope: the whole public interface of the native runtime (C89/C99-compatible; no C++ types or
 * exceptions cross it). Every function returns an inbedder_status; on failure the message is
 * available from inbedder_last_error() on the same thread.
 *
 * Handles:
 *   inbedder_options  - name/value settings, for inbedder_model_open and inbedder_encode.
 *   inbedder_model    - an open bundle (tokenizer + ONNX Runtime sessions).
 *   inbedder_result   - the vectors (and answers) of one inbedder_encode call; owns its memory.
 *
 * Thread-safety: one inbedder_model may be used by any number of threads at once
 * (inbedder_encode, inbedder_embed and the getters keep all per-call state on the caller's stack;
 * ONNX Runtime's Run is thread-safe). inbedder_model_close must not race with other calls on the
 * same model. An inbedder_options or inbedder_result may be read from several threads at once,
 * but not read while it is being changed. inbedder_last_error() is per thread.
 *
 * Example:
 *   inbedder_model* m; inbedder_result* r; const float* v; size_t n, dim;
 *   const char* texts[] = {"I love cats!", "I love dogs!"};
 *   const char* instruction = "What animal is mentioned?";
 *   if (inbedder_model_open("bundles/minilm", NULL, &m) != INBEDDER_OK) {
 *     fprintf(stderr, "%s\n", inbedder_last_error()); return 1; }
 *   inbedder_encode(m, texts, NULL, 2, &instruction, 1, NULL, &r);
 *   inbedder_result_embeddings(r, &v, &n, &dim);   -- n x dim floats, row-major
 *   inbedder_result_free(r); inbedder_model_close(m);
 */
#ifndef INBEDDER_INBEDDER_H
#define INBEDDER_INBEDDER_H

#include <stddef.h>

#if defined(INBEDDER_STATIC)
#define INBEDDER_API
#elif defined(_WIN32)
#if defined(INBEDDER_BUILDING)
#define INBEDDER_API __declspec(dllexport)
#else
#define INBEDDER_API __declspec(dllimport)
#endif
#else
#define INBEDDER_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define INBEDDER_VERSION_MAJOR 0
#define INBEDDER_VERSION_MINOR 1
#define INBEDDER_VERSION_PATCH 0

typedef enum inbedder_status {
  INBEDDER_OK = 0,
  INBEDDER_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad value, invalid UTF-8, zero texts */
  INBEDDER_ERR_UNKNOWN_OPTION = 2,   /* option name not known (or not for this bundle family) */
  INBEDDER_ERR_BUNDLE = 3,           /* missing, incomplete, corrupted or unsupported bundle */
  INBEDDER_ERR_DEVICE = 4, /* the device asked for cannot be used (ONNX Runtime's reason) */
  INBEDDER_ERR_BUFFER_TOO_SMALL = 5, /* caller's buffer too small; the required size is reported */
  INBEDDER_ERR_UNSUPPORTED = 6,      /* e.g. answers from a family that does not answer */
  INBEDDER_ERR_RUNTIME = 7,          /* ONNX Runtime or tokenizer failure while encoding */
  INBEDDER_ERR_OUT_OF_RANGE = 8,     /* index past the end */
  INBEDDER_ERR_OUT_OF_MEMORY = 9,
  INBEDDER_ERR_INTERNAL = 10
} inbedder_status;

typedef struct inbedder_options inbedder_options;
typedef struct inbedder_model inbedder_model;
typedef struct inbedder_result inbedder_result;

/* "0.1.0". Never NULL. */
INBEDDER_API const char* inbedder_version(void);
/* "INBEDDER_OK", "INBEDDER_ERR_BUNDLE", ... Never NULL. */
INBEDDER_API const char* inbedder_status_name(inbedder_status status);
/* The message of the last failed call on this thread ("" if none). Valid until the next call
 * into the library from this thread. */
INBEDDER_API const char* inbedder_last_error(void);

/* -- options ------------------------------------------------------------------------------
 * Names (an unknown name is INBEDDER_ERR_UNKNOWN_OPTION naming it):
 *   open:   "device" (string "cpu" | "cuda" | "auto", default "cpu"),
 *           "threads" (int >= 0, intra-op threads; 0 = the cores this process may use, its
 *           affinity mask),
 *           "spinning" (int 0 (default) / 1: whether idle onnxruntime pool threads busy-wait
 *           for the next operator's work instead of sleeping, intra- and inter-op, as the Python
 *           runtime's spinning=False / True; spinning saves a wake-up per operator on an idle
 *           machine but burns the cores other processes need; any other value is
 *           INBEDDER_ERR_INVALID_ARGUMENT),
 *           "session_cache" (string: a directory where each graph is kept as onnxruntime
 *           optimized it for this machine, weights pre-packed, so that later opens skip that
 *           work; created when missing; CPU sessions only; about twice the graph's size on
 *           disk; the same entries as the Python runtime's session_cache=, README "Session
 *           cache"; "" or unset: no cache),
 *           "row_ops" (int 1 (default) / 0: on the CPU, run a graph's row-ops form when the
 *           bundle has one (graphs.<role>.row_ops: the same graph with inbedder's fused
 *           per-token int8 operators, bit-identical outputs, faster) or always the stock graph;
 *           any other value is INBEDDER_ERR_INVALID_ARGUMENT),
 *           "verify" (how file checksums are checked at open: string "stamp" (default) |
 *           "full" | "none", or int 1 = "stamp" / 0 = "none"; "stamp" hashes every file except
 *           one whose entry in the bundle's verified-stamp .inbedder-verified still matches,
 *           "full" hashes every file, "none" checks sizes only; the same stamp file and rules
 *           as the Python runtime, README "Checksums and the verified-stamp")
 *   encode: "batch_size" (int >= 1, default 32), "truncation" (string "input" | "reference"),
 *           "normalize" (int 0/1: L2-normalise after the bundle's post-processing),
 *           "answers" (int 0/1: also return each text's answer),
 *           "decode_steps" (int, masked-lm bundles: passes of iterative unmasking),
 *           "max_new_tokens" (int, causal-lm bundles: answer length),
 *           "precision" (string, of the output, as sentence-transformers' quantize_embeddings:
 *           "float32" (default) | "float16" | "int8" | "uint8" | "binary" | "ubinary"; see
 *           inbedder_result_output_shape. int8 / uint8 take each dimension's range over the
 *           texts of the call, so they need more than one text)
 * Setting an encode option and passing the options to inbedder_model_open (or the reverse) is
 * INBEDDER_ERR_UNKNOWN_OPTION; so is a family option on a bundle of another family. */
INBEDDER_API inbedder_status inbedder_options_create(inbedder_options** out);
INBEDDER_API void inbedder_options_destroy(inbedder_options* options);
INBEDDER_API inbedder_status inbedder_options_set_string(inbedder_options* options,
                                                         const char* name, const char* value);
INBEDDER_API inbedder_status inbedder_options_set_int(inbedder_options* options, const char* name,
                                                      long value);
/* Removes a setting (back to the default). */
INBEDDER_API inbedder_status inbedder_options_clear(inbedder_options* options, const char* name);

/* -- model --------------------------------------------------------------------------------
 * Opens the bundle directory (plain, or versioned: inbedder.current naming a v-... directory,
 * read under a shared flock): checks the manifest (format, version, every field's type, range
 * and value, every file's size and sha256, plain file names, no links out), loads the tokenizer,
 * runs the bundle family's checks (recipe, graph roles and outputs, token ids within the
 * vocabulary, ...) and loads the ONNX graph(s); a failed check is INBEDDER_ERR_BUNDLE with the
 * Python runtime's message.
 * bundle_dir may also be a hub name "org/name" that is not a directory: the bundle the Python
 * runtime fetched into the local bundle cache (<HF_HUB_CACHE>/../inbedder/bundles/...), never
 * downloaded here. options may be NULL. On failure *out is NULL. */
INBEDDER_API inbedder_status inbedder_model_open(const char* bundle_dir,
                                                 const inbedder_options* options,
                                                 inbedder_model** out);
INBEDDER_API void inbedder_model_close(inbedder_model* model);
/* The embedding dimension. */
INBEDDER_API inbedder_status inbedder_model_dim(const inbedder_model* model, size_t* dim);
/* Manifest strings, owned by the model: key "recipe", "family", "precision", "device" (the
 * resolved one: "cpu" or "cuda"), "needs_instruction" ("yes" when the recipes embed a text under
 * an instruction: InBedder, INSTRUCTOR; "no" for sentence-embedding, whose instruction is an
 * optional prefix). Unknown key: INBEDDER_ERR_INVALID_ARGUMENT. */
INBEDDER_API inbedder_status inbedder_model_info(const inbedder_model* model, const char* key,
                                                 const char** value);
/* *answers = 1 when the bundle's family produces answer strings. */
INBEDDER_API inbedder_status inbedder_model_answers(const inbedder_model* model, int* answers);

/* -- encoding -----------------------------------------------------------------------------
 * texts: n_texts UTF-8 strings; text_lengths: their byte lengths, or NULL when every text is
 * NUL-terminated. instructions: n_instructions UTF-8 NUL-terminated strings, 1 (for every text)
 * or n_texts (one per text); or none (n_instructions 0, instructions may be NULL), which only a
 * bundle whose info "needs_instruction" is "no" takes (each text under ""); for the others it is
 * INBEDDER_ERR_INVALID_ARGUMENT ("" is an instruction: the empty one). options: encode options,
 * or NULL. n_texts == 0 is INBEDDER_ERR_INVALID_ARGUMENT. Texts are batched by token length;
 * results do not depend on batch_size or on which texts share a batch. */
INBEDDER_API inbedder_status inbedder_encode(inbedder_model* model, const char* const* texts,
                                             const size_t* text_lengths, size_t n_texts,
                                             const char* const* instructions, size_t n_instructions,
                                             const inbedder_options* options,
                                             inbedder_result** out);
/* Row-major (n, dim) float32, owned by the result. */
INBEDDER_API inbedder_status inbedder_result_embeddings(const inbedder_result* result,
                                                        const float** data, size_t* n, size_t* dim);
/* Copies the (n, dim) vectors into the caller's buffer of capacity floats; *required (may be
 * NULL) gets n * dim. Too small: INBEDDER_ERR_BUFFER_TOO_SMALL and nothing copied. */
INBEDDER_API inbedder_status inbedder_result_copy_embeddings(const inbedder_result* result,
                                                             float* buffer, size_t capacity,
                                                             size_t* required);
/* The vectors in the encode's "precision": *n rows of *cols elements of *element_bytes bytes,
 * row-major (any out-pointer may be NULL). float32: cols = dim, 4 bytes (the same numbers as
 * inbedder_result_embeddings); float16: 2 bytes, IEEE binary16 bits in host byte order;
 * int8 / uint8: 1 byte, 255 steps between each dimension's min and max over the call's vectors
 * (int8 offset by -128); binary / ubinary: cols = ceil(dim / 8) bytes of sign bits (x > 0), the
 * first dimension in the high bit (numpy packbits), as int8 offset by -128 / uint8.
 * *precision gets the name, owned by the result. */
INBEDDER_API inbedder_status inbedder_result_output_shape(const inbedder_result* result,
                                                          const char** precision, size_t* n,
                                                          size_t* cols, size_t* element_bytes);
/* Copies those n * cols * element_bytes bytes into the caller's buffer of capacity bytes;
 * *required (may be NULL) gets that number. Too small: INBEDDER_ERR_BUFFER_TOO_SMALL and
 * nothing copied. */
INBEDDER_API inbedder_status inbedder_result_copy_output(const inbedder_result* result,
                                                         void* buffer, size_t capacity,
                                                         size_t* required);
/* Answer i (UTF-8, NUL-terminated, owned by the result; *length may be NULL). Only when the
 * encode asked for answers ("answers" = 1), else INBEDDER_ERR_UNSUPPORTED. */
INBEDDER_API inbedder_status inbedder_result_answer(const inbedder_result* result, size_t index,
                                                    const char** answer, size_t* length);
INBEDDER_API void inbedder_result_free(inbedder_result* result);

/* One call, caller-owned output: NUL-terminated texts under one instruction (NULL: none, as
 * n_instructions 0 above), vectors into out (capacity floats, needs n_texts * dim; *required,
 * may be NULL, gets that number). */
INBEDDER_API inbedder_status inbedder_embed(inbedder_model* model, const char* const* texts,
                                            size_t n_texts, const char* instruction,
                                            const inbedder_options* options, float* out,
                                            size_t capacity, size_t* required);

#ifdef __cplusplus
}
#endif

#endif /* INBEDDER_INBEDDER_H */
