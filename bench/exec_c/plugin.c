/* A core0-style exec plugin in C: `plugin echo '<json-args>'` prints the args back as the result.
 *
 * core0 ran a plugin once per call as `<path> <command> [<json-args>]` and read its stdout
 * framed as "20:::\n<json result>\n:::"; a failure is a non-zero exit with the error text on
 * stderr ("missing command", "unknown command: X"). Echoing the args verbatim (they are JSON
 * already) is the least work such a plugin can do, so this row is exec's best case.
 * The bench builds it with `cc -O2` into bench/build/ when a C compiler is present.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("missing command\n", stderr);
        return 1;
    }
    if (strcmp(argv[1], "echo") != 0) {
        fprintf(stderr, "unknown command: %s\n", argv[1]);
        return 1;
    }
    fputs("20:::\n", stdout);
    fputs(argc > 2 ? argv[2] : "null", stdout);
    fputs("\n:::\n", stdout);
    return fflush(stdout) == 0 ? 0 : 1;
}
