/* Asks the running libexpat, once per input line, whether a parser that has
 * not started can be stopped (CVE-2024-50602: it could, and resuming it crashed). */
#include <expat.h>
#include <stdio.h>

int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        XML_Parser p = XML_ParserCreate(NULL);
        int status = XML_StopParser(p, XML_TRUE);
        const XML_LChar *why = XML_ErrorString(XML_GetErrorCode(p));
        printf("%d %s\n", status, why ? why : "(none)");
        XML_ParserFree(p);
    }
    return 0;
}
