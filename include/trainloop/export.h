#pragma once

/// TRAINLOOP_API marks what the shared library exports: the library is
/// compiled with hidden visibility (-fvisibility=hidden
/// -fvisibility-inlines-hidden), so only the classes and functions declared
/// with it are part of its ABI. A class marked with it exports its
/// out-of-line members, its vtable and its typeinfo (which `catch` and
/// `dynamic_cast` across the library's boundary need); inline members and
/// templates are compiled into the user's code. A static build defines
/// TRAINLOOP_STATIC_DEFINE (its CMake target passes it on), and the macro is
/// empty.
#if defined(TRAINLOOP_STATIC_DEFINE)
#define TRAINLOOP_API
#elif defined(_WIN32)
#if defined(TRAINLOOP_BUILDING)
#define TRAINLOOP_API __declspec(dllexport)
#else
#define TRAINLOOP_API __declspec(dllimport)
#endif
#else
#define TRAINLOOP_API __attribute__((visibility("default")))
#endif
