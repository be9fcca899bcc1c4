/* A core0-style legacy plugin, as core0 ran them: `plugin <command> [<json-args>]`, once per call.
 *
 * The result goes on stdout between a "20:::" line and a ":::" line; any other stdout line is a
 * log line. A failure is an error text on stderr and a non-zero exit.
 */
#include <stdio.h>
#include <string.h>

static int output(const char *json)
{
    printf("20:::\n%s\n:::\n", json);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("missing command\n", stderr);
        return 1;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "version") == 0) {
        puts("legacy plugin: version requested");
        return output("\"1.0alpha\"");
    }
    if (strcmp(cmd, "echo") == 0) {
        return output(argc > 2 ? argv[2] : "null");
    }
    fprintf(stderr, "unknown command: %s\n", cmd);
    return 1;
}
