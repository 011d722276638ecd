/* Asks the running libpng, once per input line (plte, trns or hist), whether
 * passing a getter's pointer back to its setter reads freed memory
 * (CVE-2026-34757): png_set_PLTE, png_set_tRNS and png_set_hIST freed the
 * old array and then copied from the caller's pointer, which was that array.
 * The probe's own allocator (png_create_write_struct_2) fills freed blocks
 * with 0xEE and keeps them until the query ends, so the old code reads back
 * 238s where the fixed one keeps the values it was given; nothing crashes. */
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct block { struct block *next; size_t size; max_align_t data[]; };
static struct block *quarantine;

static png_voidp probe_malloc(png_structp png, png_alloc_size_t size)
{
    (void)png;
    struct block *b = malloc(sizeof *b + size);
    if (!b) return NULL;
    b->size = size;
    b->next = NULL;
    return b->data;
}

static void probe_free(png_structp png, png_voidp p)
{
    (void)png;
    if (!p) return;
    struct block *b = (struct block *)((char *)p - offsetof(struct block, data));
    memset(b->data, 0xEE, b->size);
    b->next = quarantine;
    quarantine = b;
}

static void release(void)
{
    while (quarantine) {
        struct block *b = quarantine;
        quarantine = b->next;
        free(b);
    }
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        png_structp png = png_create_write_struct_2(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL,
                                                    NULL, probe_malloc, probe_free);
        png_infop info = png_create_info_struct(png);
        if (setjmp(png_jmpbuf(png))) {
            printf("%s: libpng error\n", line);
            png_destroy_write_struct(&png, &info);
            release();
            continue;
        }
        png_color palette[4] = {{10, 20, 30}, {11, 21, 31}, {12, 22, 32}, {13, 23, 33}};
        png_set_IHDR(png, info, 1, 1, 8, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE,
                     PNG_COMPRESSION_TYPE_BASE, PNG_FILTER_TYPE_BASE);
        png_set_PLTE(png, info, palette, 4);
        if (strcmp(line, "plte") == 0) {
            png_colorp got; int n;
            png_get_PLTE(png, info, &got, &n);
            png_set_PLTE(png, info, got, n);
            png_get_PLTE(png, info, &got, &n);
            printf("plte %d: %d %d %d, %d %d %d\n", n, got[0].red, got[0].green, got[0].blue,
                   got[3].red, got[3].green, got[3].blue);
        } else if (strcmp(line, "trns") == 0) {
            png_byte alpha[4] = {255, 200, 100, 0};
            png_bytep got; int n; png_color_16p color;
            png_set_tRNS(png, info, alpha, 4, NULL);
            png_get_tRNS(png, info, &got, &n, &color);
            png_set_tRNS(png, info, got, n, NULL);
            png_get_tRNS(png, info, &got, &n, &color);
            printf("trns %d: %d %d %d %d\n", n, got[0], got[1], got[2], got[3]);
        } else if (strcmp(line, "hist") == 0) {
            png_uint_16 hist[4] = {42, 142, 242, 342};
            png_uint_16p got;
            png_set_hIST(png, info, hist);
            png_get_hIST(png, info, &got);
            png_set_hIST(png, info, got);
            png_get_hIST(png, info, &got);
            printf("hist: %d %d %d %d\n", got[0], got[1], got[2], got[3]);
        } else {
            printf("%s: unknown query (plte, trns, hist)\n", line);
        }
        png_destroy_write_struct(&png, &info);
        release();
    }
    return 0;
}
