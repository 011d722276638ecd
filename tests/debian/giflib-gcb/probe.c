/* Asks the running giflib, once per input line, whether
 * EGifGCBToSavedExtension writes a graphics control block's 4 bytes into an
 * extension block that holds fewer (CVE-2026-26740, a heap overflow). The
 * probe's block says it holds 1 byte but has room for 8, so the old code's
 * write past the end is seen (and harmless) rather than a crash.
 * No libgif-dev: the types of gif_lib.h 5.2.1 are declared here. */
#include <stdbool.h>
#include <stdio.h>
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
typedef struct { int DisposalMode; bool UserInputFlag; int DelayTime; int TransparentColor; } GraphicsControlBlock;
#define GRAPHICS_EXT_FUNC_CODE 0xf9

int EGifGCBToSavedExtension(const GraphicsControlBlock *GCB, GifFileType *GifFile, int ImageIndex);

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        GifByteType bytes[8];
        memset(bytes, 0xAA, sizeof bytes);
        ExtensionBlock ext = {1, bytes, GRAPHICS_EXT_FUNC_CODE};
        SavedImage image;
        GifFileType gif;
        memset(&image, 0, sizeof image);
        memset(&gif, 0, sizeof gif);
        image.ExtensionBlockCount = 1;
        image.ExtensionBlocks = &ext;
        gif.ImageCount = 1;
        gif.SavedImages = &image;
        GraphicsControlBlock gcb = {0, false, 0x1234, 5};
        int rc = EGifGCBToSavedExtension(&gcb, &gif, 0);
        int past = 0;
        for (int i = ext.ByteCount; i < (int)sizeof bytes; i++)
            past += bytes[i] != 0xAA;
        printf("%s, %d bytes written past the block\n", rc == 1 ? "GIF_OK" : "GIF_ERROR", past);
    }
    return 0;
}
