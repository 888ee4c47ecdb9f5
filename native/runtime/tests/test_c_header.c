/* The public header as plain C (built with -std=c90 and -std=c99 -pedantic-errors). */
#include <stdio.h>
#include <string.h>

#include "inbedder/inbedder.h"

int main(void) {
  inbedder_options* o = NULL;
  inbedder_model* m = NULL;
  inbedder_status s;
  if (strcmp(inbedder_version(), "0.1.0") != 0) return 1;
  if (inbedder_options_create(&o) != INBEDDER_OK) return 1;
  s = inbedder_options_set_int(o, "no_such_option", 1);
  if (s != INBEDDER_ERR_UNKNOWN_OPTION || strstr(inbedder_last_error(), "no_such_option") == NULL)
    return 1;
  s = inbedder_model_open(NULL, o, &m);
  if (s != INBEDDER_ERR_INVALID_ARGUMENT || m != NULL) return 1;
  inbedder_options_destroy(o);
  printf("%s: %s\n", inbedder_status_name(s), inbedder_last_error());
  return 0;
}
