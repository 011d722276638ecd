/* Asks the running libtiff, once per input line, to read a 4x4 RGB image
 * into a raster of 4x2 with TIFFReadRGBAImageOriented (CVE-2025-9900: it
 * wrote the image at raster + (rheight - height) * rwidth, computed in
 * 32 bits: 16 GiB past a raster on the stack, a wild write; the fix reads only
 * the rows that fit). Each read runs in a forked child, which inherits the
 * process's code as it is (patched or not): the parent reports the child's
 * answer (and how many guard words around the raster changed), or the signal
 * that killed it. No libtiff-dev: the few prototypes and tags are declared
 * here. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct tiff TIFF;
TIFF *TIFFOpen(const char *, const char *);
void TIFFClose(TIFF *);
int TIFFSetField(TIFF *, uint32_t, ...);
int TIFFWriteScanline(TIFF *, void *, uint32_t, uint16_t);
int TIFFReadRGBAImageOriented(TIFF *, uint32_t, uint32_t, uint32_t *, int, int);
#include <stdarg.h>
typedef void (*TIFFErrorHandler)(const char *, const char *, va_list);
TIFFErrorHandler TIFFSetWarningHandler(TIFFErrorHandler);
TIFFErrorHandler TIFFSetErrorHandler(TIFFErrorHandler);

#define TIFFTAG_IMAGEWIDTH 256
#define TIFFTAG_IMAGELENGTH 257
#define TIFFTAG_BITSPERSAMPLE 258
#define TIFFTAG_COMPRESSION 259
#define TIFFTAG_PHOTOMETRIC 262
#define TIFFTAG_SAMPLESPERPIXEL 277
#define TIFFTAG_ROWSPERSTRIP 278
#define TIFFTAG_PLANARCONFIG 284
#define ORIENTATION_TOPLEFT 1

#define W 4
#define H 4
#define GUARD 64
#define SENTINEL 0x5a5a5a5au

static void quiet(const char *m, const char *f, va_list ap) { (void)m; (void)f; (void)ap; }

int main(void)
{
    char path[] = "/tmp/hotpatch-tiff.XXXXXX", line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    TIFFSetWarningHandler(quiet);
    TIFFSetErrorHandler(quiet);
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); return 1; }
    close(fd);
    TIFF *out = TIFFOpen(path, "w");
    if (!out) { printf("cannot write %s\n", path); return 1; }
    TIFFSetField(out, TIFFTAG_IMAGEWIDTH, (uint32_t)W);
    TIFFSetField(out, TIFFTAG_IMAGELENGTH, (uint32_t)H);
    TIFFSetField(out, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(out, TIFFTAG_SAMPLESPERPIXEL, 3);
    TIFFSetField(out, TIFFTAG_COMPRESSION, 1);
    TIFFSetField(out, TIFFTAG_PHOTOMETRIC, 2);
    TIFFSetField(out, TIFFTAG_PLANARCONFIG, 1);
    TIFFSetField(out, TIFFTAG_ROWSPERSTRIP, (uint32_t)H);
    for (uint32_t y = 0; y < H; y++) {
        unsigned char row[W * 3];
        for (int i = 0; i < W * 3; i++) row[i] = (unsigned char)(y * 16 + i);
        TIFFWriteScanline(out, row, y, 0);
    }
    TIFFClose(out);
    while (fgets(line, sizeof line, stdin)) {
        pid_t child = fork();
        if (child == 0) {
            struct rlimit no_core = {0, 0};
            setrlimit(RLIMIT_CORE, &no_core);
            uint32_t buf[GUARD + W * 2 + GUARD];
            for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++) buf[i] = SENTINEL;
            uint32_t *raster = buf + GUARD;
            TIFF *in = TIFFOpen(path, "r");
            if (!in) { printf("cannot read %s\n", path); _exit(1); }
            int ok = TIFFReadRGBAImageOriented(in, W, 2, raster, ORIENTATION_TOPLEFT, 0);
            TIFFClose(in);
            int outside = 0;
            for (int i = 0; i < GUARD; i++)
                outside += (buf[i] != SENTINEL) + (buf[GUARD + W * 2 + i] != SENTINEL);
            printf("%s, %d guard words changed\n", ok ? "read" : "not read", outside);
            _exit(0);
        }
        int status = 0;
        waitpid(child, &status, 0);
        if (WIFSIGNALED(status))
            printf("crashed: %s\n", strsignal(WTERMSIG(status)));
    }
    unlink(path);
    return 0;
}
