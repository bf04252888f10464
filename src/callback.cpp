#include "trainloop/callback.h"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <typeinfo>

namespace trainloop {

std::string Callback::state_key() const {
  const char* mangled = typeid(*this).name();
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && demangled ? demangled.get() : mangled;
}

LambdaCallback::LambdaCallback(Function function, std::string name)
    : function_(std::move(function)), name_(std::move(name)) {}

void LambdaCallback::on_event(Event event, TrainingLoop& loop) { function_(event, loop); }

std::string LambdaCallback::state_key() const { return name_; }

namespace callbacks {
std::shared_ptr<Callback> lambda(LambdaCallback::Function function, std::string name) {
  return std::make_shared<LambdaCallback>(std::move(function), std::move(name));
}
}  // namespace callbacks

}  // namespace trainloop
