/* Asks the running giflib, once per input line, whether GifMakeSavedImage
 * frees the caller's raster when copying an image fails (CVE-2026-23868).
 * The copy fails because GifMakeMapObject refuses a colour map of 3 colours
 * (not a power of two); the old code then freed the half-made copy, whose
 * RasterBits still pointed at the caller's. free is interposed here (the
 * library's calls reach it through its PLT) to see that without a crash.
 * No libgif-dev: the types of gif_lib.h 5.2.1 are declared here. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned char GifByteType;
typedef int GifWord;
typedef struct { GifByteType Red, Green, Blue; } GifColorType;
typedef struct { int ColorCount; int BitsPerPixel; bool SortFlag; GifColorType *Colors; } ColorMapObject;
typedef struct { GifWord Left, Top, Width, Height; bool Interlace; ColorMapObject *ColorMap; } GifImageDesc;
typedef struct { int ByteCount; GifByteType *Bytes; int Function; } ExtensionBlock;
typedef struct {
    GifImageDesc ImageDesc;
    GifByteType *RasterBits;
    int ExtensionBlockCount;
    ExtensionBlock *ExtensionBlocks;
} SavedImage;
typedef struct {
    GifWord SWidth, SHeight, SColorResolution, SBackGroundColor;
    GifByteType AspectByte;
    ColorMapObject *SColorMap;
    int ImageCount;
    GifImageDesc Image;
    SavedImage *SavedImages;
    int ExtensionBlockCount;
    ExtensionBlock *ExtensionBlocks;
    int Error;
    void *UserData;
    void *Private;
} GifFileType;

SavedImage *GifMakeSavedImage(GifFileType *GifFile, const SavedImage *CopyFrom);

extern void __libc_free(void *);
static void *watched;
static int watched_freed;

void free(void *p)
{
    if (p != NULL && p == watched) {
        watched_freed = 1;   /* the caller still owns it: not freed for real */
        return;
    }
    __libc_free(p);
}

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        GifColorType colors[3] = {{0, 0, 0}, {1, 1, 1}, {2, 2, 2}};
        ColorMapObject map = {3, 2, false, colors};
        SavedImage from;
        GifFileType gif;
        memset(&from, 0, sizeof from);
        memset(&gif, 0, sizeof gif);
        from.ImageDesc.Width = 2;
        from.ImageDesc.Height = 2;
        from.ImageDesc.ColorMap = &map;
        from.RasterBits = malloc(4);
        memset(from.RasterBits, 7, 4);
        watched = from.RasterBits;
        watched_freed = 0;
        SavedImage *sp = GifMakeSavedImage(&gif, &from);
        printf("%s %s\n", sp ? "image" : "NULL", watched_freed ? "freed-copy" : "kept");
        watched = NULL;
        __libc_free(from.RasterBits);
        free(gif.SavedImages);
    }
    return 0;
}
